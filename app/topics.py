"""Topic declarations from topics.yaml, and ``topics apply`` / ``topics check`` against a cluster.

>>> names = [t.name for t in load_topics()]
>>> "ad-impressions" in names and "risk-alerts" in names
True
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOPICS_FILE = Path(__file__).resolve().parent.parent / "topics.yaml"


class TopicsError(ValueError):
    pass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    retention_ms: int
    cleanup_policy: str
    key: str
    value_schema: str
    copartition: str | None = None

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def load_topics(path: Path | str = TOPICS_FILE) -> list[TopicSpec]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or data.get("version") != 1:
        raise TopicsError(f"{path}: expected a mapping with version: 1")
    defaults = data.get("defaults", {})
    specs = []
    for entry in data["topics"]:
        try:
            specs.append(TopicSpec(
                name=entry["name"],
                partitions=int(entry.get("partitions", defaults.get("partitions", 1))),
                replication=int(entry.get("replication", defaults.get("replication", 1))),
                retention_ms=int(entry["retention_ms"]),
                cleanup_policy=entry["cleanup_policy"],
                key=str(entry["key"]),
                value_schema=entry["value_schema"],
                copartition=entry.get("copartition"),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise TopicsError(f"{path}: topic {entry!r}: {exc}") from None
    check_copartitioning(specs)
    return specs


def check_copartitioning(specs: list[TopicSpec], actual: dict[str, int] | None = None) -> None:
    """Co-partitioned topics must have one partition count: an error, never a warning."""
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for s in specs:
        if s.copartition:
            groups[s.copartition][s.name] = (actual or {}).get(s.name, s.partitions)
    for group, counts in groups.items():
        if len(set(counts.values())) > 1:
            raise TopicsError(f"co-partitioned group {group!r} has different partition counts: "
                              f"{counts}")


def _admin(bootstrap: str, client_config: dict[str, Any] | None = None):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})


def apply_topics(bootstrap: str, prefix: str = "", replication: int | None = None,
                 client_config: dict[str, Any] | None = None, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are
    (``check_topics`` reports their drift)."""
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap, client_config)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [s for s in load_topics() if prefix + s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics([
        NewTopic(prefix + s.name, num_partitions=s.partitions,
                 replication_factor=replication or s.replication, config=s.config())
        for s in wanted
    ], operation_timeout=timeout)
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(name)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent apply is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
    return created


def check_topics(bootstrap: str, prefix: str = "", client_config: dict[str, Any] | None = None,
                 timeout: float = 30.0) -> list[str]:
    """Drift between topics.yaml and the cluster, one line per problem (empty: in sync).
    Raises TopicsError when co-partitioned inputs differ in partition count."""
    from confluent_kafka.admin import ConfigResource

    admin = _admin(bootstrap, client_config)
    meta = admin.list_topics(timeout=timeout).topics
    specs = load_topics()
    problems: list[str] = []
    actual: dict[str, int] = {}
    resources = []
    for s in specs:
        name = prefix + s.name
        if name not in meta:
            problems.append(f"{name}: missing")
            continue
        actual[s.name] = len(meta[name].partitions)
        if actual[s.name] != s.partitions:
            problems.append(f"{name}: partitions {actual[s.name]} != declared {s.partitions}")
        resources.append((s, ConfigResource("topic", name)))
    if resources:
        futures = admin.describe_configs([r for _s, r in resources])
        for s, res in resources:
            configs = futures[res].result(timeout)
            for key, want in s.config().items():
                have = configs[key].value if key in configs else None
                if have != want:
                    problems.append(f"{prefix + s.name}: {key}={have} != declared {want}")
    check_copartitioning(specs, actual)
    return problems
