"""Per-advertiser event-time tumbling windows: what one window accumulates.

A window is ``[start, start + size)`` in event time (epoch ms, UTC). It accumulates plain counters
and two bounded sketches (unique users, click-delay histogram), so its state stays a few hundred
bytes whatever the traffic, and it serialises to a small JSON-able dict for the changelog.

Feedback is attributed to the window of the feedback's own ``event_time`` (not the impression's):
feedback arrives minutes to hours after the impression, long after that window closed, and a
stream must not hold windows open for hours. Rates such as reports per impression are therefore
"reports received in this window / impressions served in this window", which is what a baseline
of the same advertiser is compared against, so the attribution is consistent on both sides.

>>> w = AdvertiserWindow(start=0, end=60_000)
>>> w.add_impression({"user_id": "u1", "region": "US", "cost_micros": 2000, "clicked": True,
...                   "click_delay_ms": 150, "converted": False, "dwell_ms": 800})
>>> w.impressions, w.clicks, w.fast_clicks
(1, 1, 1)
"""

from __future__ import annotations

import array
import base64
import bisect
import zlib
from typing import Any

# Click-delay histogram bucket upper bounds (ms). The median time-to-click is read from it.
CLICK_DELAY_BOUNDS = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000)
FAST_CLICK_MS = 300
SHORT_DWELL_MS = 1000
KMV_K = 64  # unique-user sketch size: exact below 64 distinct users, ~12% error above
MAX_REGIONS = 32
FEEDBACK_COUNTERS = ("report", "hide", "not_interested", "complaint", "refund_request",
                     "satisfaction")
REASON_COUNTERS = ("scam", "misleading", "offensive", "counterfeit", "not_received", "other")
_FEEDBACK_INDEX = {k: i for i, k in enumerate(FEEDBACK_COUNTERS)}
_REASON_INDEX = {r: i for i, r in enumerate(REASON_COUNTERS)}
_HASH_SPACE = float(1 << 32)
_bisect_left = bisect.bisect_left
_crc32 = zlib.crc32


def window_start(event_time_ms: int, size_ms: int) -> int:
    """Start of the tumbling window holding ``event_time_ms``.

    >>> window_start(1_700_000_032_345, 60_000)
    1699999980000
    """
    return event_time_ms - (event_time_ms % size_ms)


class AdvertiserWindow:
    """Counters for one advertiser in one window. ``snapshot()``/``restore()`` name the state."""

    __slots__ = (
        "start", "end", "impressions", "spend_micros", "clicks", "fast_clicks", "conversions",
        "dwell_sum_ms", "short_dwells", "click_delays", "user_hashes", "regions",
        "feedback", "reasons", "rating_sum", "low_ratings", "first_event_ms", "last_event_ms",
    )

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.impressions = 0
        self.spend_micros = 0.0
        self.clicks = 0
        self.fast_clicks = 0
        self.conversions = 0
        self.dwell_sum_ms = 0.0
        self.short_dwells = 0
        self.click_delays = [0] * (len(CLICK_DELAY_BOUNDS) + 1)
        self.user_hashes: list[int] = []  # sorted, the KMV_K smallest distinct hashes
        self.regions: dict[str, int] = {}
        self.feedback = [0] * len(FEEDBACK_COUNTERS)
        self.reasons = [0] * len(REASON_COUNTERS)
        self.rating_sum = 0.0
        self.low_ratings = 0
        self.first_event_ms = 0
        self.last_event_ms = 0

    # -- accumulate -------------------------------------------------------------------------
    def add_impression(self, ev: dict) -> None:
        # Runs per event in the worker and the replay: one function, module-level lookups.
        self.impressions += 1
        self.spend_micros += ev["cost_micros"]
        if ev["clicked"]:
            self.clicks += 1
            delay = ev["click_delay_ms"]
            if delay < FAST_CLICK_MS:
                self.fast_clicks += 1
            self.click_delays[_bisect_left(CLICK_DELAY_BOUNDS, delay)] += 1
            dwell = ev["dwell_ms"]
            self.dwell_sum_ms += dwell
            if dwell < SHORT_DWELL_MS:
                self.short_dwells += 1
        if ev["converted"]:
            self.conversions += 1
        # unique users: the KMV sketch keeps the KMV_K smallest distinct user hashes, sorted
        h = _crc32(ev["user_id"].encode())
        hashes = self.user_hashes
        if len(hashes) < KMV_K or h < hashes[-1]:
            i = _bisect_left(hashes, h)
            if i == len(hashes) or hashes[i] != h:
                hashes.insert(i, h)
                if len(hashes) > KMV_K:
                    hashes.pop()
        region = ev["region"]
        regions = self.regions
        n = regions.get(region)
        if n is not None:
            regions[region] = n + 1
        elif len(regions) < MAX_REGIONS:
            regions[region] = 1
        else:
            regions["other"] = regions.get("other", 0) + 1

    def add_feedback(self, ev: dict) -> None:
        kind = ev["kind"]
        i = _FEEDBACK_INDEX.get(kind)
        self.feedback[FEEDBACK_COUNTERS.index(kind) if i is None else i] += 1  # unknown: raises
        if kind == "satisfaction":
            rating = ev["rating"]
            self.rating_sum += rating
            if rating <= 2:
                self.low_ratings += 1
        reason = ev["reason"]
        if reason:
            self.reasons[_REASON_INDEX.get(reason, -1)] += 1

    # -- read -------------------------------------------------------------------------------
    def unique_users(self) -> float:
        hashes = self.user_hashes
        if len(hashes) < KMV_K:
            return float(len(hashes))
        return (KMV_K - 1) * _HASH_SPACE / (hashes[-1] + 1)

    def median_click_delay_ms(self) -> float:
        total = self.clicks
        if not total:
            return 0.0
        half = (total + 1) / 2
        seen = 0
        for i, n in enumerate(self.click_delays):
            seen += n
            if seen >= half:
                return float(CLICK_DELAY_BOUNDS[i]) if i < len(CLICK_DELAY_BOUNDS) else 60000.0
        return 60000.0

    def feedback_count(self, kind: str) -> int:
        return self.feedback[FEEDBACK_COUNTERS.index(kind)]

    def reason_count(self, reason: str) -> int:
        return self.reasons[REASON_COUNTERS.index(reason)]

    # -- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        # The sketch is up to 64 32-bit hashes: 344 base64 characters instead of ~700 of JSON
        # digits, which keeps an advertiser with two open windows under 4 KiB.
        data["user_hashes"] = base64.b64encode(
            array.array("I", self.user_hashes).tobytes()).decode("ascii")
        return data

    @classmethod
    def restore(cls, data: dict[str, Any]) -> "AdvertiserWindow":
        w = cls.__new__(cls)
        for name in cls.__slots__:
            setattr(w, name, data[name])
        hashes = array.array("I")
        hashes.frombytes(base64.b64decode(data["user_hashes"]))
        w.user_hashes = hashes.tolist()
        return w
