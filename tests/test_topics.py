"""topics.yaml against a live cluster: apply is idempotent, check reports drift, and
co-partitioned inputs with different partition counts are an error (broker behaviour relied on:
CreateTopics / DescribeConfigs through confluent-kafka's AdminClient)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from app.topics import TopicsError, apply_topics, check_copartitioning, check_topics, load_topics


def test_declared_topics_cover_the_pipeline_and_inputs_are_copartitioned() -> None:
    specs = {s.name: s for s in load_topics()}
    for name in ("ad-impressions", "user-feedback", "risk-dead-letter", "risk-alerts",
                 "risk-alerts-shadow", "risk-scores", "risk-model-control",
                 "risk-enforcement-decisions"):
        assert name in specs
    assert specs["ad-impressions"].partitions == specs["user-feedback"].partitions
    assert specs["risk-model-control"].cleanup_policy == "compact"


def test_copartition_mismatch_in_the_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text(textwrap.dedent("""
        version: 1
        topics:
          - {name: a, partitions: 6, copartition: inputs, retention_ms: 1, cleanup_policy: delete,
             key: k, value_schema: s}
          - {name: b, partitions: 3, copartition: inputs, retention_ms: 1, cleanup_policy: delete,
             key: k, value_schema: s}
    """))
    with pytest.raises(TopicsError, match="different partition counts"):
        load_topics(bad)


def test_copartition_check_uses_actual_counts() -> None:
    specs = load_topics()
    with pytest.raises(TopicsError):
        check_copartitioning(specs, {"ad-impressions": 6, "user-feedback": 3})


@pytest.mark.integration
def test_apply_is_idempotent_and_check_reports_drift(kafka_broker, topic_prefix: str) -> None:
    bootstrap = kafka_broker.bootstrap
    created = apply_topics(bootstrap, topic_prefix)
    assert len(created) == len(load_topics())
    assert apply_topics(bootstrap, topic_prefix) == []  # nothing missing the second time
    assert check_topics(bootstrap, topic_prefix) == []


@pytest.mark.integration
def test_check_fails_on_copartition_drift(kafka_broker, topic_prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    fut = admin.create_topics([NewTopic(f"{topic_prefix}user-feedback", num_partitions=3,
                                        replication_factor=1)])
    for f in fut.values():
        f.result(30)
    apply_topics(kafka_broker.bootstrap, topic_prefix)  # creates the rest, leaves the 3
    # Topic metadata propagates asynchronously after CreateTopics: wait until it is visible.
    deadline = time.monotonic() + 30
    while True:
        meta = admin.list_topics(timeout=5).topics
        if all(f"{topic_prefix}{s.name}" in meta for s in load_topics()):
            break
        assert time.monotonic() < deadline, "created topics never showed up in metadata"
    with pytest.raises(TopicsError, match="different partition counts"):
        check_topics(kafka_broker.bootstrap, topic_prefix)
