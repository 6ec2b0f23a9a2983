"""When things happen: lazy arrival processes, each a generator of nondecreasing Unix times.

People follow their local day (a diurnal curve per time zone, quieter weekends, sessions of
a few turns separated by reading and typing time). Integrations follow their callers: office
hours of a customer base, cron schedules with start jitter, queue-driven batches that drain at
a fixed concurrency, bursts switched on and off (a two-state Markov-modulated process).
Everything is drawn from the caller's ``Random``; nothing is materialised ahead of time, so
an account's stream costs constant memory however long the simulated period.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from random import Random

DAY = 86400.0
HOUR = 3600.0

# Relative activity by local hour (0-23). Why these shapes: people sleep and peak in the
# evening; offices run 9-18 with a lunch dip; students work after school and late; a flat
# curve for services whose callers are spread over every time zone.
PROFILES: dict[str, tuple[float, ...]] = {
    "person": (
        0.25,
        0.12,
        0.06,
        0.04,
        0.04,
        0.06,
        0.15,
        0.35,
        0.55,
        0.7,
        0.8,
        0.85,
        0.8,
        0.8,
        0.8,
        0.8,
        0.85,
        0.9,
        0.95,
        1.0,
        1.0,
        0.95,
        0.75,
        0.45,
    ),
    "office": (
        0.02,
        0.02,
        0.02,
        0.02,
        0.02,
        0.03,
        0.08,
        0.3,
        0.75,
        1.0,
        1.0,
        0.95,
        0.7,
        0.9,
        1.0,
        1.0,
        0.9,
        0.6,
        0.3,
        0.15,
        0.1,
        0.06,
        0.04,
        0.03,
    ),
    "student": (
        0.2,
        0.08,
        0.03,
        0.02,
        0.02,
        0.02,
        0.05,
        0.15,
        0.3,
        0.35,
        0.4,
        0.45,
        0.45,
        0.5,
        0.6,
        0.8,
        0.95,
        1.0,
        0.9,
        0.95,
        1.0,
        0.9,
        0.7,
        0.4,
    ),
    "global": (
        0.8,
        0.75,
        0.7,
        0.7,
        0.72,
        0.78,
        0.85,
        0.9,
        0.95,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.98,
        0.95,
        0.92,
        0.9,
        0.88,
        0.85,
        0.82,
    ),
}
WEEKEND = {"person": 1.1, "office": 0.15, "student": 0.8, "global": 0.85}


def local_weight(ts: float, tz_h: float, profile: str) -> float:
    """Relative activity at ``ts`` for an actor in UTC offset ``tz_h`` hours."""
    local = ts + tz_h * HOUR
    hour = int(local // HOUR) % 24
    # 1970-01-01 was a Thursday: day index 2 and 3 after it (mod 7) are Saturday and Sunday.
    weekend = int(local // DAY) % 7 in (2, 3)
    w = PROFILES[profile][hour]
    return w * WEEKEND[profile] if weekend else w


def poisson_day(
    rng: Random, start: float, end: float, per_day: float, tz_h: float, profile: str
) -> Iterator[float]:
    """A Poisson process of ``per_day`` mean events a day shaped by the local profile.

    Thinning: candidates at the peak rate, kept with probability weight / peak.
    """
    if per_day <= 0:
        return
    prof = PROFILES[profile]
    mean_w = sum(prof) / 24.0
    peak = max(prof) * max(1.0, WEEKEND[profile])
    rate = per_day / DAY / mean_w * peak  # candidates per second
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        if rng.random() * peak < local_weight(t, tz_h, profile):
            yield t


def sessions(
    rng: Random,
    start: float,
    end: float,
    per_day: float,
    tz_h: float,
    profile: str,
    turns_mean: float,
    think_s: float,
) -> Iterator[tuple[float, int]]:
    """People's use: sessions start at ``per_day`` a day; yields (ts, turn index in session).

    A session has a geometric number of turns; between turns the person reads the answer and
    types (log-normal around ``think_s``). Sessions never overlap (the next one waits).
    """
    busy_until = start
    p_stop = 1.0 / max(1.0, turns_mean)
    for t0 in poisson_day(rng, start, end, per_day, tz_h, profile):
        if t0 < busy_until:
            continue
        t = t0
        turn = 0
        while t < end:
            yield t, turn
            turn += 1
            if rng.random() < p_stop:
                break
            t += think_s * rng.lognormvariate(0.0, 0.7)
        busy_until = t


def cron(
    rng: Random, start: float, end: float, period_s: float, offset_s: float, jitter_s: float
) -> Iterator[float]:
    """A scheduled job: every ``period_s`` at ``offset_s`` into the period, start jitter added
    (schedulers start late, never early), and now and then a skipped run."""
    k = math.floor((start - offset_s) / period_s) + 1
    while True:
        t = offset_s + k * period_s + abs(rng.gauss(0.0, jitter_s))
        k += 1
        if t >= end:
            return
        if t >= start and rng.random() > 0.02:
            yield t


def drain(
    rng: Random, t0: float, items: int, concurrency: int, latency_s: float
) -> Iterator[float]:
    """Dispatch times of a queue of ``items`` worked off by ``concurrency`` workers.

    Each worker sends its next item when its previous answer arrives (log-normal latency), so
    the rate is concurrency / latency with the jitter a real pool has.
    """
    free = [t0 + rng.uniform(0.0, 0.3) for _ in range(max(1, concurrency))]
    heapq.heapify(free)
    for _ in range(items):
        t = heapq.heappop(free)
        yield t
        heapq.heappush(free, t + latency_s * rng.lognormvariate(0.0, 0.5) + 0.01)


def onoff(
    rng: Random, start: float, end: float, on_rate_s: float, on_mean_s: float, off_mean_s: float
) -> Iterator[float]:
    """Bursts: exponential on-periods with Poisson arrivals at ``on_rate_s``, then silence."""
    t = start + rng.expovariate(1.0 / off_mean_s)
    while t < end:
        stop = min(end, t + rng.expovariate(1.0 / on_mean_s))
        while True:
            t += rng.expovariate(on_rate_s)
            if t >= stop:
                break
            yield t
        t = stop + rng.expovariate(1.0 / off_mean_s)
