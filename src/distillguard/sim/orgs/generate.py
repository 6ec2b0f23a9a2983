"""Build the world and stream its traffic to disk: ``traffic.jsonl[.gz]``, ``accounts.jsonl``,
``labels.jsonl``.

Every account plays its own program with its own ``Random`` (seeded from the run seed and the
account's index), and the accounts' streams are merged by time with a heap, so memory holds one
pending record per account plus each open conversation, whatever the number of days.
"""

from __future__ import annotations

import gzip
import heapq
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from random import Random
from typing import IO

import orjson

from distillguard.errors import InputError
from distillguard.sim.orgs import apps, people
from distillguard.sim.orgs.campaigns import CAMPAIGNS
from distillguard.sim.orgs.sources import SPLITS, Sources, load_sources
from distillguard.sim.orgs.timing import DAY
from distillguard.sim.orgs.world import Actor, Env, exchanges
from distillguard.traffic import JsonlWriter

# 2026-09-07 00:00 UTC, a Monday: a fixed epoch keeps a seed's output identical forever.
EPOCH = 1788739200.0
MIN_ACCOUNTS = 100
# Each account holds a generator and a few pending records (about 20-40 KiB): this many stay
# within a few GiB.
MAX_ACCOUNTS = 100_000

HONEST_APPS: dict[str, Callable[[people.Maker], list[Actor]]] = {
    "app-rag-docs": apps.rag_docs,
    "app-translation": apps.translation,
    "app-code-assistant": apps.code_assistant,
    "app-etl-classify": apps.etl_classify,
    "app-edu-tutor": apps.edu_tutor,
    "app-support-bot": apps.support_bot,
    "app-news-digest": apps.news_digest,
    "team-benchmark-eval": apps.benchmark_eval,
    "app-router": apps.router,
}
HONEST_PERSONAS = ("person-casual", "person-heavy", "course-cohort", *HONEST_APPS)
CAMPAIGN_PERSONAS = tuple(CAMPAIGNS)
PERSONAS = (*HONEST_PERSONAS, *CAMPAIGN_PERSONAS)


@dataclass(frozen=True)
class OrgsConfig:
    """What world to simulate."""

    # Total accounts, honest and campaign; campaigns take about 4 % (sizes scale with this,
    # each type keeps a minimum so every persona exists in a small world).
    accounts: int = 2000
    # Simulated days; at least one so that daily jobs and people's days happen.
    days: float = 7.0
    seed: int = 0
    # Which half of the real prompt sources to draw from: "a" to fit, "b" to report on.
    split: str = "a"
    # Where in the period the newest model is released (fraction of the period): campaigns
    # that hop to it and routers that adopt it need time on both sides.
    new_model_at: float = 0.55
    # App organisations of each kind per honest account: a few hundred accounts of people per
    # integration, as on a general-purpose API.
    orgs_per_honest_account: float = 0.003
    # University course cohorts per honest account (each 8-20 students).
    cohorts_per_honest_account: float = 0.003
    # Heavy users among the people (the rest chat casually).
    heavy_share: float = 0.12

    def __post_init__(self) -> None:
        if self.accounts > MAX_ACCOUNTS:
            raise InputError(
                f"--accounts must be at most {MAX_ACCOUNTS:,} (memory grows with accounts), "
                f"got {self.accounts:,}"
            )
        if self.accounts < MIN_ACCOUNTS:
            raise InputError(
                f"--accounts must be at least {MIN_ACCOUNTS} so that every persona "
                f"fits, got {self.accounts}"
            )
        if not 1.0 <= self.days <= 366.0:
            raise InputError(f"--days must be within [1, 366], got {self.days}")
        if self.split not in SPLITS:
            raise InputError(f"--split must be one of {SPLITS}, got {self.split!r}")
        if not 0.05 <= self.new_model_at <= 0.95:
            raise InputError("new_model_at must be within [0.05, 0.95]")
        if (
            not 0 < self.orgs_per_honest_account < 0.05
            or not 0 < self.cohorts_per_honest_account < 0.05
        ):
            raise InputError("org and cohort densities must be within (0, 0.05)")
        if not 0.0 <= self.heavy_share <= 0.5:
            raise InputError("heavy_share must be within [0, 0.5]")


@dataclass(frozen=True)
class OrgsResult:
    traffic_path: Path
    accounts_path: Path
    labels_path: Path
    exchanges: int
    accounts: int
    campaign_accounts: int
    by_persona: dict[str, int] = field(default_factory=dict)  # exchanges per persona
    accounts_by_persona: dict[str, int] = field(default_factory=dict)


def build_world(config: OrgsConfig, sources: Sources) -> tuple[Env, list[Actor]]:
    """Every account of the world, honest and campaign, in a deterministic order."""
    start = EPOCH
    end = start + config.days * DAY
    env = Env(start, end, sources, start + config.new_model_at * (end - start))
    mk = people.Maker(Random(f"sim-orgs/world/{config.seed}"), env)
    scale = config.accounts / 2000.0
    actors: list[Actor] = []
    for i, (build, at_2000, minimum) in enumerate(CAMPAIGNS.values()):
        size = max(minimum, round(at_2000 * scale))
        # Large types are run by two independent actors (own infrastructure, own cards): a
        # detector must not merge them into one cluster because they behave alike.
        second = size * 2 // 5 if at_2000 >= 10 and size >= 2 * minimum else 0
        for k, part in enumerate((size - second, second)):
            if part:
                actors += build(
                    mk, part, f"camp-{config.seed}-{i:02d}{'ab'[k]}-{mk.seed() % 10**6:06d}"
                )
    n_honest = config.accounts - len(actors)
    n_orgs = max(1, round(n_honest * config.orgs_per_honest_account))
    for name, build_app in HONEST_APPS.items():
        rare = name in ("team-benchmark-eval", "app-router")  # fewer of these exist
        for _ in range(max(1, round(n_orgs / 3)) if rare else n_orgs):
            actors += build_app(mk)
    cohorts = max(1, round(n_honest * config.cohorts_per_honest_account))
    for _ in range(cohorts):
        size = mk.rng.randint(8, 20)
        left = config.accounts - len(actors) - 4  # keep room for people
        actors += people.course_cohort(mk, max(3, min(size, left)))
    n_people = config.accounts - len(actors)
    if n_people < 2:
        raise InputError(f"--accounts {config.accounts} leaves no room for people; use more")
    n_heavy = max(1, round(n_people * config.heavy_share))
    made = 0
    while made < n_people:
        heavy = made < n_heavy
        if made + 2 <= n_people and mk.rng.random() < 0.06:
            actors += people.household(mk, heavy)
            made += 2
        else:
            actors += people.person(mk, heavy)
            made += 1
    Random(f"sim-orgs/order/{config.seed}").shuffle(actors)  # persona never follows from order
    return env, actors


def _open_traffic(path: Path) -> tuple[IO[bytes], IO[bytes], Path]:
    """(stream to write, underlying file, temporary path) for plain or gzip output."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = open(tmp, "wb", buffering=1024 * 1024)  # noqa: SIM115
    if path.name.endswith(".gz"):
        # mtime 0: the same seed gives byte-identical files
        gz = gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=3, mtime=0)
        return gz, raw, tmp  # type: ignore[return-value]
    return raw, raw, tmp


def generate_orgs(
    config: OrgsConfig,
    *,
    data_dir: Path,
    out: Path,
    gzip_traffic: bool = False,
    on_progress: Callable[[float, int], None] | None = None,
) -> OrgsResult:
    """Simulate the world of ``config`` into the directory ``out``.

    ``on_progress(fraction_of_period_done, exchanges_written)`` is called every few thousand
    records (for a progress bar). Files appear under their final names only when complete.
    """
    sources = load_sources(data_dir, config.split)
    env, actors = build_world(config, sources)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    traffic_path = out / ("traffic.jsonl.gz" if gzip_traffic else "traffic.jsonl")
    with JsonlWriter(out / "accounts.jsonl") as w:
        for a in actors:
            w.write(a.account_row())
    with JsonlWriter(out / "labels.jsonl") as w:
        for a in actors:
            w.write(a.label_row())

    persona_of = {a.account_id: a.persona for a in actors}
    streams = [
        exchanges(a, env, Random(f"sim-orgs/{config.seed}/{i}")) for i, a in enumerate(actors)
    ]
    by_persona: Counter[str] = Counter()
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    span = env.end - env.start
    count = 0
    fh, raw, tmp = _open_traffic(traffic_path)
    try:
        for rec in heapq.merge(*streams, key=itemgetter("ts")):
            fh.write(dumps(rec, option=opt))
            by_persona[persona_of[rec["account_id"]]] += 1
            count += 1
            if on_progress is not None and count % 5000 == 0:
                on_progress((rec["ts"] - env.start) / span, count)
        fh.close()
        raw.close()
        os.replace(tmp, traffic_path)
    except BaseException:
        fh.close()
        raw.close()
        tmp.unlink(missing_ok=True)
        raise
    if on_progress is not None:
        on_progress(1.0, count)
    return OrgsResult(
        traffic_path=traffic_path,
        accounts_path=out / "accounts.jsonl",
        labels_path=out / "labels.jsonl",
        exchanges=count,
        accounts=len(actors),
        campaign_accounts=sum(a.label == "campaign" for a in actors),
        by_persona=dict(sorted(by_persona.items())),
        accounts_by_persona=dict(sorted(Counter(a.persona for a in actors).items())),
    )
