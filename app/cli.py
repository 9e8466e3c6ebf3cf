"""``riskstream``: the one command for operators, ML engineers and the demo.

    riskstream demo [--duration S]          embedded broker + topics + worker + simulator, live
    riskstream worker                       run one worker (settings from environment variables)
    riskstream broker start|stop|status     local broker: --kind apache|embedded
    riskstream topics apply|check           create / verify the topics of topics.yaml
    riskstream simulate ...                 produce realistic traffic with injected incidents
    riskstream backtest ...                 replay files through the same engine, offline
    riskstream alerts follow                example enforcement consumer (idempotent by alert_id)
    riskstream alerts decide ...            confirm or dismiss an alert (workers read it back)
    riskstream models list|set|shadow|promote
    riskstream bench [--quick] [--json F]   throughput, latency, state and recovery figures
    riskstream settings                     every setting, its env var and default
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.settings import Settings, SettingsError, settings_table

BROKER_STATE_DIR = Path(".riskstream") / "broker"


class CliError(RuntimeError):
    pass


def resolve_bootstrap(settings: Settings, explicit: str | None = None) -> str:
    """KAFKA_BOOTSTRAP_SERVERS (or --bootstrap) first, else the local broker's state file."""
    if explicit:
        return explicit
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    from app import brokers

    local = brokers.local_bootstrap(BROKER_STATE_DIR)
    if local:
        return local
    raise CliError("no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or run "
                   "`riskstream broker start` (or `riskstream demo`, which starts one)")


def client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka security settings derived from the same Settings as the worker."""
    conf: dict[str, Any] = {}
    if settings.security_protocol.upper() != "PLAINTEXT":
        conf["security.protocol"] = settings.security_protocol
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = settings.sasl_password
    if settings.ssl_cafile:
        conf["ssl.ca.location"] = settings.ssl_cafile
    return conf


def setup_logging(level: str) -> None:
    from app.logs import configure_logging

    configure_logging(level)


# -- subcommands ------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.worker import run_worker

    return run_worker(settings, resolve_bootstrap(settings, args.bootstrap))


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from app import brokers

    state_dir = Path(args.state_dir)
    if args.action == "start":
        current = brokers.status(state_dir)
        if current:
            print(f"broker already running: {current['kind']} at {current['bootstrap']} "
                  f"(pid {current['pid']})")
            return 0
        if args.kind == "apache":
            info = brokers.start_apache_kafka(state_dir, port=args.port)
        else:
            info = brokers.start_embedded(state_dir, port=args.port)
        print(f"started {info.kind} broker at {info.bootstrap} (pid {info.pid}); "
              f"log: {info.log_file}")
        return 0
    if args.action == "stop":
        stopped = brokers.stop(state_dir)
        print("stopped" if stopped else "no local broker running")
        return 0
    current = brokers.status(state_dir)
    if not current:
        print("no local broker running")
        return 1
    print(f"{current['kind']} broker at {current['bootstrap']} (pid {current['pid']})")
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from app.topics import TopicsError, apply_topics, check_topics

    bootstrap = resolve_bootstrap(settings, args.bootstrap)
    conf = client_config(settings)
    if args.action == "apply":
        created = apply_topics(bootstrap, settings.topic_prefix, args.replication_factor, conf)
        print(f"created {len(created)} topic(s): {', '.join(sorted(created)) or '-'}")
        return 0
    try:
        problems = check_topics(bootstrap, settings.topic_prefix, conf)
    except TopicsError as exc:
        print(f"ERROR: {exc}")
        return 2
    for line in problems:
        print(f"DRIFT: {line}")
    print("topics in sync with topics.yaml" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from riskstream import simulate

    if not getattr(args, "out_dir", None):
        args.bootstrap = resolve_bootstrap(settings, args.bootstrap)
    if getattr(args, "topic_prefix", None) is None:
        args.topic_prefix = settings.topic_prefix
    # the same SASL/TLS settings as every other client (explicit producer_config wins)
    args.producer_config = {**client_config(settings),
                            **(getattr(args, "producer_config", None) or {})}
    return simulate.run(args)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.demo import run_demo

    return run_demo(args, settings)


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from app.transport import tune_gc
    from riskstream.backtest import run

    tune_gc()  # as the worker: full collections over the advertisers' states (docs/performance.md)
    return run(args, settings)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from app.bench import run_bench

    return run_bench(args, settings)


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for env, default, doc in settings_table():
        print(f"{env:40} {default:28} {doc}")
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from app.enforcement import decide, follow

    bootstrap = resolve_bootstrap(settings, args.bootstrap)
    if args.action == "decide":
        if not (args.alert_id and args.advertiser and args.decision):
            raise CliError("alerts decide needs --alert-id, --advertiser and --decision")
        record = decide(bootstrap, settings, args.alert_id, args.advertiser, args.decision,
                        args.note)
        print(f"published {record['decision']} for {record['alert_id']} "
              f"({record['advertiser_id']})")
        return 0
    return follow(bootstrap, settings, args)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from app.model_control import run_models_command

    offline = args.action in ("list", "fit-cohort")
    bootstrap = None if offline else resolve_bootstrap(settings, args.bootstrap)
    if args.action == "fit-cohort":
        from app.cohort_fit import run_fit_cohort

        return run_fit_cohort(args, settings)
    if args.action == "compare":
        from app.model_compare import run_compare

        if args.spec:
            raise CliError("`models compare` takes no spec (use --champion NAME)")
        return run_compare(args, settings, bootstrap)
    return run_models_command(args, settings, bootstrap)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one stream worker")
    p.add_argument("--bootstrap")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("broker", help="manage the local broker")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--kind", choices=["apache", "embedded"], default="embedded")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--state-dir", default=str(BROKER_STATE_DIR))
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="apply or check topics.yaml")
    p.add_argument("action", choices=["apply", "check"])
    p.add_argument("--bootstrap")
    p.add_argument("--replication-factor", type=int, default=None)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("simulate", help="produce simulated traffic with incidents")
    from riskstream import simulate

    simulate.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="everything on an embedded broker, alerts shown live")
    p.add_argument("--duration", type=float, default=None,
                   help="stop by itself after this many seconds")
    p.add_argument("--broker", choices=["embedded", "apache"], default="embedded")
    p.add_argument("--advertisers", type=int, default=200)
    p.add_argument("--speedup", type=float, default=60.0,
                   help="event-time seconds per wall second for the simulator")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backtest", help="replay files through the engine; evaluate vs truth")
    from riskstream import backtest

    backtest.add_arguments(p)
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("bench", help="benchmark harness against the local Apache Kafka")
    p.add_argument("--quick", action="store_true", help="a smaller run of everything (< 5 min)")
    p.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    p.add_argument("--bootstrap", help="use this broker instead of starting Apache Kafka")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("alerts", help="example enforcement consumer")
    p.add_argument("action", choices=["follow", "decide"],
                   help="follow: print and record alerts; decide: publish a confirmed/dismissed "
                        "decision that workers read back (no re-alerting once confirmed)")
    p.add_argument("--bootstrap")
    p.add_argument("--alert-id")
    p.add_argument("--advertiser")
    p.add_argument("--decision", choices=["confirmed", "dismissed"])
    p.add_argument("--note")
    p.add_argument("--group", default="riskstream-enforcement-example")
    p.add_argument("--store", default=".riskstream/enforcement.sqlite",
                   help="SQLite file of handled alert ids (idempotency across restarts)")
    p.add_argument("--max-messages", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None)
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("models", help="list models, or publish a model config to workers")
    p.add_argument("action", choices=["list", "set", "shadow", "promote", "show", "compare",
                                         "fit-cohort"])
    p.add_argument("spec", nargs="*")
    p.add_argument("--bootstrap")
    c = p.add_argument_group("compare (champion vs shadow challengers on the alert topics)")
    c.add_argument("--since", help="from this time: ISO 8601 or epoch ms (default: beginning)")
    c.add_argument("--champion", help="champion model name (default: the latest enforce spec)")
    c.add_argument("--truth", help="ground truth JSONL of simulated traffic, for recall")
    c.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    c.add_argument("--read-timeout", type=float, default=120.0)
    from app.cohort_fit import add_arguments as cohort_arguments

    cohort_arguments(p)
    p.set_defaults(func=cmd_models)

    # listed for --help; main() hands everything after "tune" to riskstream.tuning
    sub.add_parser("tune", help="model variants over recorded window features: capture, replay, "
                                "sweep (the operating curve), incidents (why one was missed)")

    p = sub.add_parser("settings", help="print every setting with its env var and default")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tune"]:
        from riskstream.tuning import main as tune

        return tune(argv[1:], prog="riskstream tune")
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        setup_logging(settings.log_level)
        return int(args.func(args, settings) or 0)
    except (CliError, SettingsError) as exc:
        print(f"riskstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
