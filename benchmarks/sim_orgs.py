"""The organisations world (``distillguard sim orgs``): speed, memory, and what it produced.

One run generates a world, then reads it back with the format's own reader
(``distillguard.traffic.read_traffic``, what every consumer pays) as the peer figure, then
summarises it persona by persona (accounts, exchanges per account-day, 429s, n > 1, logprobs,
requests asking for reasoning, distinct addresses per account) and plots hourly volume by group
and the hour-of-day profile (``docs/img/sim_orgs_volume.png``).

Run: .venv/bin/python benchmarks/sim_orgs.py [--accounts 2000] [--days 7] [--seed 0]
     [--split a] [--data ../shared/data] [--out DIR] [--plot docs/img/sim_orgs_volume.png]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from distillguard.progress import tracked
from distillguard.sim.orgs import CAMPAIGN_PERSONAS, OrgsConfig, generate_orgs
from distillguard.traffic import read_labels, read_traffic

GROUPS = {"person-casual": "people", "person-heavy": "people", "course-cohort": "course"}
COT_MARKS = ("step by step", "reasoning", "show all your work", "<thinking>")


def group_of(persona: str) -> str:
    if persona in CAMPAIGN_PERSONAS:
        return "campaigns"
    return GROUPS.get(persona, "apps")


def summarise(traffic: Path, labels: Path, start: float, days: float) -> tuple[dict, dict]:
    persona = {lab.account_id: lab.persona for lab in read_labels(labels)}
    accounts = Counter(persona.values())
    rows: dict[str, Counter] = defaultdict(Counter)
    ips: dict[str, set] = defaultdict(set)
    hourly: dict[str, Counter] = defaultdict(Counter)
    with open(traffic, "rb") as fh:
        for line in fh:
            d = orjson.loads(line)
            p = persona[d["account_id"]]
            req = d["request"]
            row = rows[p]
            row["exchanges"] += 1
            row["429"] += d["status"] == 429
            row["n>1"] += (req.get("n") or 1) > 1
            row["logprobs"] += bool(req.get("logprobs"))
            text = orjson.dumps(req.get("messages") or req.get("prompt") or "").lower()
            row["cot"] += bool(req.get("reasoning_effort")) or any(
                m.encode() in text for m in COT_MARKS
            )
            row["prompt_tokens"] += d["prompt_tokens"] or 0
            ips[d["account_id"]].add(d["ip"])
            hourly[group_of(p)][int((d["ts"] - start) // 3600)] += 1
    table = {}
    for p, row in sorted(rows.items()):
        n = row["exchanges"]
        accts = [a for a, q in persona.items() if q == p and a in ips]
        table[p] = {
            "accounts": accounts[p],
            "exchanges": n,
            "per_account_day": n / accounts[p] / days,
            "429_%": 100 * row["429"] / n,
            "n>1_%": 100 * row["n>1"] / n,
            "logprobs_%": 100 * row["logprobs"] / n,
            "asks_reasoning_%": 100 * row["cot"] / n,
            "ips_per_account": sum(len(ips[a]) for a in accts) / max(1, len(accts)),
        }
    return table, hourly


def plot(hourly: dict, hours: int, release_h: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for g in ("people", "apps", "campaigns", "course"):
        series = [hourly[g][h] for h in range(hours)]
        ax1.plot(range(hours), series, label=g, lw=1)
        by_hour = [sum(series[h::24]) for h in range(24)]
        total = sum(by_hour) or 1
        ax2.plot(range(24), [x / total for x in by_hour], label=g, marker=".")
    ax1.axvline(release_h, color="k", ls="--", lw=0.8, label="newest model released")
    ax1.set_xlabel("hour since start (UTC)")
    ax1.set_ylabel("exchanges per hour")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("hour of day (UTC)")
    ax2.set_ylabel("share of the group's exchanges")
    fig.suptitle("sim orgs: hourly volume by group, and the hour-of-day profile")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="a")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=None, help="keep the world here")
    ap.add_argument("--plot", type=Path, default=Path("docs/img/sim_orgs_volume.png"))
    args = ap.parse_args()
    if not (args.data / "README.md").exists():
        print(f"shared data not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="sim_orgs_"))
    config = OrgsConfig(accounts=args.accounts, days=args.days, seed=args.seed, split=args.split)
    hours = max(1, round(args.days * 24))
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with tracked("simulated hours", total=hours, transient=True) as update:
            res = generate_orgs(
                config,
                data_dir=args.data,
                out=out,
                on_progress=lambda fraction, _n: update(round(fraction * hours)),
            )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = res.traffic_path.stat().st_size / 2**20

        cpu0, wall0 = time.process_time(), time.perf_counter()
        reader = read_traffic(res.traffic_path)
        n_read = sum(1 for _ in reader)
        rcpu, rwall = time.process_time() - cpu0, time.perf_counter() - wall0

        print(
            f"world: {res.accounts:,} accounts ({res.campaign_accounts} campaign), "
            f"{args.days:g} days, seed {args.seed}, split {args.split}: "
            f"{res.exchanges:,} exchanges, {size_mb:,.0f} MiB"
        )
        print(f"{'':34}{'exchanges/s CPU':>16}{'exchanges/s wall':>18}")
        print(
            f"{'sim orgs (generate + write)':34}{res.exchanges / cpu:>16,.0f}"
            f"{res.exchanges / wall:>18,.0f}   peak RSS {rss_mb:,.0f} MiB"
        )
        print(
            f"{'peer: traffic.read_traffic':34}{n_read / rcpu:>16,.0f}{n_read / rwall:>18,.0f}"
            f"   skipped {reader.skipped}"
        )
        print(f"1M exchanges would take {1e6 / (res.exchanges / cpu) / 60:.1f} CPU minutes")

        from distillguard.sim.orgs.generate import EPOCH

        table, hourly = summarise(res.traffic_path, res.labels_path, EPOCH, args.days)
        keys = list(next(iter(table.values())))
        print("| persona | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for p, row in table.items():
            cells = [f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" for v in row.values()]
            print(f"| {p} | " + " | ".join(cells) + " |")
        hours = int(args.days * 24)
        plot(hourly, hours, config.new_model_at * hours, args.plot)
        print(f"plot -> {args.plot}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
