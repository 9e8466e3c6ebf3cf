"""``riskstream models fit-cohort``: rebuild the cohort reference that warm-started specs
learn before their first advertiser window (see models/cohort.py).

It replays recorded (or simulated) impressions and feedback through the same engine as the
workers, with the default model, and keeps an evenly spread sample of the windows it did not
flag, leaving out every advertiser the ground truth (``--truth``) names as an incident. The
result replaces ``models/cohort/reference-windows.jsonl.gz`` (or ``--out``); commit it with a
version bump of the warm-started specs.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from models.cohort import DEFAULT_SAMPLE, REFERENCE_FILE, sample_windows, write_reference


def add_arguments(p: Any) -> None:
    g = p.add_argument_group("fit-cohort (rebuild the warm-start reference)")
    g.add_argument("--impressions", help="JSON lines of impressions")
    g.add_argument("--feedback", help="JSON lines of feedback")
    g.add_argument("--exclude-truth", dest="exclude_truth",
                   help="ground truth JSONL: its advertisers are left out of the sample")
    g.add_argument("--out", default=str(REFERENCE_FILE), help="reference file to write")
    g.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"windows to keep (default {DEFAULT_SAMPLE})")


def run_fit_cohort(args: Any, settings: Any) -> int:
    from app.factory import engine_config
    from app.topics import load_topics
    from riskstream.backtest import read_lines, replay

    if not (args.impressions and args.feedback):
        print("riskstream models fit-cohort: give --impressions and --feedback", file=sys.stderr)
        return 2
    exclude = set()
    if args.exclude_truth:
        exclude = {orjson.loads(line)["advertiser_id"] for line in read_lines(args.exclude_truth)}
    partitions = {t.name: t for t in load_topics()}["ad-impressions"].partitions
    result = replay(read_lines(args.impressions), read_lines(args.feedback),
                    engine_config=engine_config(settings), partitions=partitions)
    scores = [o.record for o in result.outputs if o.kind == "score"]
    windows = sample_windows(scores, exclude=exclude, limit=args.sample)
    if not windows:
        print("riskstream models fit-cohort: no unflagged window to learn from", file=sys.stderr)
        return 1
    n = write_reference(windows, args.out)
    print(f"fit-cohort: {n} reference windows from {len(scores):,} scored windows "
          f"({len(exclude)} advertisers excluded) -> {args.out}")
    return 0
