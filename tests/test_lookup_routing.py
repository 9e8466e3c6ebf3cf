"""Any worker answers any advertiser: two workers in one consumer group split the partitions, and
a lookup sent to the worker that does not own an advertiser is forwarded to the one that does
(Faust's assignor knows which worker holds each ``advertiser-state`` changelog partition). The
board on either worker shows every advertiser (both read risk-scores outside the group), also
on the worker that joined after the scores were written.

Relies on: the broker's group rebalance splitting 6 partitions over two members, Faust's
assignor publishing every member's web URL with the assignment, the changelog restoring the
moved partitions' state, and the broker's time index (offsets_for_times) for the look-back."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from tests.conftest import produce_lines, simulated_case

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_a_lookup_on_either_worker_is_answered_by_the_owner(kafka_broker, kafka_topics, worker,
                                                           tmp_path):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = simulated_case(tmp_path, seed=5, advertisers=12, duration_s=600, spam_start_s=300,
                          diurnal_amplitude=0.0)
    advertisers = sorted({orjson.loads(line)["advertiser_id"] for line in case.impressions})
    app_id = f"rs-test-{uuid.uuid4().hex[:10]}"
    a = worker(prefix, RISKSTREAM_APP_ID=app_id)
    produce_lines(bootstrap, f"{prefix}ad-impressions", case.impressions)
    produce_lines(bootstrap, f"{prefix}user-feedback", case.feedback)

    def board_of(w) -> set[str]:
        status, body = w.get("/board/api/top?limit=100")
        assert status == 200
        return {r["advertiser_id"] for r in orjson.loads(body)["rows"]}

    deadline = time.monotonic() + 60
    while board_of(a) != set(advertisers):
        assert time.monotonic() < deadline, f"A's board: {board_of(a)}\n{a.log_tail(20)}"
        time.sleep(0.5)
    # B joins after every score was written: its board starts from the topics' recent past
    # (RISKSTREAM_BOARD_LOOKBACK_S), and the rebalance moves half the state to it
    b = worker(prefix, RISKSTREAM_APP_ID=app_id)

    last: list = []

    def answers() -> dict[str, tuple[dict, dict]] | None:
        out = {}
        for adv in advertisers:
            docs = []
            for w in (a, b):
                status, body = w.get(f"/advertisers/{adv}", timeout=5.0)
                last[:] = [w.port, adv, status, body[:300]]
                if status != 200:
                    return None
                docs.append(orjson.loads(body))
            if not all(d["sources"]["state"] and d["sources"]["board"] for d in docs):
                last[:] = [adv, [(d["served_by"], d["sources"]) for d in docs]]
                return None
            out[adv] = (docs[0], docs[1])
        return out

    deadline = time.monotonic() + 90
    got = None
    while got is None or len({d[0]["served_by"] for d in got.values()}) < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"no answer from both owners within 90s; last: "
                        f"{ {k: v[0]['served_by'] for k, v in (got or {}).items()} }; {last}\n"
                        f"A:\n{a.log_tail(20)}\nB:\n{b.log_tail(20)}", pytrace=False)
        time.sleep(0.5)
        got = answers()

    owners = {a.url(""), b.url("")}
    for adv, (via_a, via_b) in got.items():
        # both workers give the owner's answer: the same worker, partition and model state
        assert via_a["served_by"] == via_b["served_by"] and via_a["served_by"] in owners, adv
        assert via_a["partition"] == via_b["partition"]
        assert via_a["model"]["windows_seen"] > 0 and via_b["model"]["windows_seen"] > 0
    # and each worker's board shows all advertisers, whichever worker owns them
    assert board_of(a) == board_of(b) == set(advertisers)
