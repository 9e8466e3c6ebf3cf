# The two commands of the README. Both create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?=
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(BIN)/riskstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/riskstream

# The demo: embedded broker, topics, a worker and the simulator; alerts printed live.
demo: install
	$(BIN)/riskstream demo $(if $(DURATION),--duration $(DURATION),)

# The tests: unit, integration and end-to-end against a real broker started by the session
# fixture (Apache Kafka 4.1.1 when java and mvn are present, else the embedded broker).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .riskstream .pytest_cache
