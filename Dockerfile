# syntax=docker/dockerfile:1
# riskstream image: one image for every role (worker, topics apply, simulate, alerts follow).
#
#   docker build -t riskstream:0.1.0 .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=host:9092 -e RISKSTREAM_WEB_HOST=0.0.0.0 \
#       -p 127.0.0.1:6066:6066 riskstream:0.1.0            # a worker
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=host:9092 riskstream:0.1.0 topics apply
#
# Settings come from environment variables only (`riskstream settings` lists them). The image
# does not change the loopback default of RISKSTREAM_WEB_HOST: compose and Kubernetes set
# 0.0.0.0 explicitly where the metrics/health port must be reachable on the pod/container network.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# -- build: install the project and its dependencies into a self-contained virtualenv ---------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# README.m[d]: pyproject names README.md as the readme; the glob keeps the build working while
# the file does not exist yet (setuptools only warns).
COPY pyproject.toml README.m[d] ./
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY riskstream ./riskstream
RUN pip install .
# Data files the code reads next to its packages (app/topics.py: <pkg parent>/topics.yaml,
# riskstream/alerts.py: <pkg parent>/schemas/). pyproject ships Python packages only, so place
# them beside the installed packages, then prove that the installed code finds them.
COPY topics.yaml ./topics.yaml
COPY schemas ./schemas
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && cp topics.yaml "$site/topics.yaml" \
 && cp -r schemas "$site/schemas" \
 && cd / \
 && python -c "from app.topics import load_topics; from riskstream.alerts import SCHEMA_PATH; \
assert load_topics(); assert SCHEMA_PATH.is_file(), SCHEMA_PATH" \
 && riskstream --help > /dev/null

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="riskstream" \
      org.opencontainers.image.description="Streaming ad-risk detection: Faust workers with online River models" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RISKSTREAM_DATA_DIR=/var/lib/riskstream/worker

# Non-root user with a fixed uid/gid (Kubernetes runAsUser/fsGroup 10001 match it). The working
# directory is its writable home: relative paths the CLI uses (.riskstream/...) land there.
RUN groupadd --system --gid 10001 riskstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/riskstream \
        --shell /usr/sbin/nologin riskstream \
 && mkdir -p /var/lib/riskstream/worker /var/lib/riskstream/enforcement \
 && chown -R 10001:10001 /var/lib/riskstream

COPY --from=build /opt/venv /opt/venv

WORKDIR /var/lib/riskstream
USER 10001:10001
# /metrics, /livez, /readyz (RISKSTREAM_WEB_PORT)
EXPOSE 6066

ENTRYPOINT ["riskstream"]
CMD ["worker"]
