"""Sharing campaign indicators: does a partner holding our bundle catch the same hydra?

    .venv/bin/python benchmarks/intel_sharing.py [--accounts 300] [--days 3] [--plot PNG]

For each of the two independent traffic generators (``distillguard simulate`` and
``distillguard sim orgs``):

1. *Home*: simulate a population (held-out split), score it with the shipped detector
   (``monitor score``), export the indicators of every flagged campaign.
2. *Partner*: simulate another population with another seed (the partner's own people, apps
   and unrelated campaigns), then let every home campaign *reappear* there: new account and
   key ids, new hosts in the same /24s, the same agents, cards and request frames (the same
   infrastructure), ten days later.
3. Match the bundle against the partner's traffic: share of reappeared campaign accounts
   matched (any indicator; *strong*: 2+ independent kinds of one campaign, the rule the
   detector would act on), and false matches on the partner's honest accounts.

Peer in the same run: *naive* sharing, every key of a flagged campaign without the home
precision filter (what copying a cluster's IPs, agents and cards into a feed would do).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KEY = b"benchmark-community-key-0123456789"


def reappear(records, accounts: set[str], seed: int, shift_s: float):
    """The same actors at the partner: new ids, new hosts in the same /24s, same everything
    else. Yields (record dict, home account id)."""
    rng = random.Random(seed)
    new_id: dict[str, str] = {}
    host: dict[tuple[str, str], int] = {}
    for r in records:
        if r.account_id not in accounts:
            continue
        acct = new_id.setdefault(r.account_id, f"acct-partner-{rng.getrandbits(48):012x}")
        prefix = r.ip.rsplit(".", 1)[0] if "." in r.ip else r.ip.rsplit(":", 1)[0]
        sep = "." if "." in r.ip else ":"
        d = r.to_dict()
        d.update(
            id=f"partner-{r.id}",
            account_id=acct,
            key_id=f"key-{acct[5:]}",
            ts=r.ts + shift_s,
            ip=f"{prefix}{sep}{host.setdefault((acct, prefix), rng.randint(1, 254))}",
        )
        yield d, r.account_id


def simulate(
    generator: str, out: Path, *, accounts: int, days: int, seed: int
) -> tuple[Path, Path]:
    """(traffic, labels) of one population of ``generator``."""
    out.mkdir(parents=True, exist_ok=True)
    if generator == "sim":
        from distillguard.sim.simulate import SimConfig, simulate

        cfg = SimConfig(
            accounts=accounts, campaigns=max(5, accounts // 30), seed=seed, split="test", days=days
        )
        simulate(cfg, data_dir=DATA, out=out / "traffic.jsonl", labels=out / "labels.jsonl")
    else:
        from distillguard.sim.orgs import OrgsConfig, generate_orgs

        generate_orgs(
            OrgsConfig(accounts=accounts, days=days, seed=seed, split="b"), data_dir=DATA, out=out
        )
    return out / "traffic.jsonl", out / "labels.jsonl"


def run_generator(generator: str, work: Path, args: argparse.Namespace, progress) -> dict:
    from distillguard.intel.fingerprints import CommunityKey
    from distillguard.intel.indicators import ExtractConfig, extract_intel
    from distillguard.intel.matching import SharedIndicator, match_traffic
    from distillguard.monitor.offline import score_traffic
    from distillguard.traffic import read_labels, read_traffic, read_verdicts, write_jsonl

    key = CommunityKey(KEY)
    task = progress.add_task(f"{generator}: home + partner worlds", total=5)
    home_t, home_l = simulate(
        generator, work / "home", accounts=args.accounts, days=args.days, seed=args.seed
    )
    progress.advance(task)
    score_traffic(home_t, work / "verdicts.jsonl", workers=2)
    progress.advance(task)
    verdicts = list(read_verdicts(work / "verdicts.jsonl"))
    labels = {lab.account_id: lab for lab in read_labels(home_l)}
    campaign_accts = {a for a, lab in labels.items() if lab.label == "campaign"}
    flagged = {v.account_id for v in verdicts if v.flagged}
    from distillguard.intel.indicators import stix_uuid

    # Which exported campaigns were real: a flagged group whose members are mostly campaign.
    members: dict[str, list[str]] = defaultdict(list)
    for v in verdicts:
        if v.flagged:
            members[v.cluster_id or f"account:{v.account_id}"].append(v.account_id)
    real_campaign = {
        f"campaign--{stix_uuid(key, 'campaign', g)}": 2 * sum(a in campaign_accts for a in m)
        > len(m)
        for g, m in members.items()
    }
    sets = {}
    for name, cfg in (
        ("ours", ExtractConfig()),
        ("naive", ExtractConfig(min_precision=1e-9, min_account_share=1e-9, min_requests=1)),
    ):
        sets[name] = extract_intel(
            verdicts, read_traffic(home_t), key, producer="home", created=time.time(), cfg=cfg
        ).intel
    progress.advance(task)
    part_t, part_l = simulate(
        generator, work / "partner", accounts=args.accounts, days=args.days, seed=args.seed + 1000
    )
    partner_labels = {lab.account_id: lab for lab in read_labels(part_l)}
    moved_from: dict[str, str] = {}
    rows = [r.to_dict() for r in read_traffic(part_t)]
    for d, home_acct in reappear(
        read_traffic(home_t), campaign_accts, args.seed, (args.days + 10) * 86400.0
    ):
        moved_from[d["account_id"]] = home_acct
        rows.append(d)
    write_jsonl(work / "partner_all.jsonl", rows)
    progress.advance(task)
    honest = {a for a, lab in partner_labels.items() if lab.label == "honest"}
    own_campaign = {a for a, lab in partner_labels.items() if lab.label == "campaign"}
    res: dict = {
        "generator": generator,
        "home_campaign_accounts": len(campaign_accts),
        "home_flagged": len(flagged),
        "flagged_campaign": len(flagged & campaign_accts),
        "moved": len(moved_from),
        "partner_honest": len(honest),
        "partner_own_campaign": len(own_campaign),
        "methods": {},
    }
    for name, intel in sets.items():
        shared = [SharedIndicator("home", i) for i in intel.indicators]
        out = match_traffic(read_traffic(work / "partner_all.jsonl"), shared, key)
        acc = {a.account_id: a for a in out.accounts}
        by_persona: dict[str, Counter] = defaultdict(Counter)
        for new, old in moved_from.items():
            p = labels[old].persona or "?"
            by_persona[p]["n"] += 1
            by_persona[p]["caught_home"] += old in flagged
            by_persona[p]["any"] += new in acc
            by_persona[p]["strong"] += new in acc and acc[new].strong
        kinds = Counter(i.kind for i in intel.indicators)
        false_kinds: Counter[str] = Counter()
        false_from_home_fp = 0
        for a in honest:
            if a in acc:
                false_kinds.update(acc[a].kinds)
                false_from_home_fp += not real_campaign.get(acc[a].campaign_id, True)
        res["methods"][name] = {
            "campaigns": len(intel.campaigns),
            "indicators": len(intel.indicators),
            "kinds": dict(kinds),
            "per_campaign": len(intel.indicators) / max(1, len(intel.campaigns)),
            "moved_any": sum(a in acc for a in moved_from),
            "moved_strong": sum(a in acc and acc[a].strong for a in moved_from),
            "moved_flagged_home": sum(moved_from[a] in flagged for a in moved_from),
            "moved_any_of_flagged": sum(a in acc for a in moved_from if moved_from[a] in flagged),
            "moved_strong_of_flagged": sum(
                a in acc and acc[a].strong for a in moved_from if moved_from[a] in flagged
            ),
            "honest_any": sum(a in acc for a in honest),
            "honest_strong": sum(a in acc and acc[a].strong for a in honest),
            "own_campaign_any": sum(a in acc for a in own_campaign),
            "own_campaign_strong": sum(a in acc and acc[a].strong for a in own_campaign),
            "by_persona": {p: dict(c) for p, c in sorted(by_persona.items())},
            "real_campaigns": sum(real_campaign.get(c.id, False) for c in intel.campaigns),
            "honest_false_kinds": dict(false_kinds),
            "honest_false_from_home_fp": false_from_home_fp,
        }
    progress.advance(task)
    return res


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.1f} %)" if b else "-"


def report(results: list[dict], console) -> None:
    from rich.table import Table

    for r in results:
        console.print(
            f"\n[bold]{r['generator']}[/bold]: home has {r['home_campaign_accounts']} "
            f"campaign accounts, detector flagged {r['home_flagged']} accounts "
            f"({r['flagged_campaign']} of them campaign); {r['moved']} reappear at the "
            f"partner beside {r['partner_honest']} honest accounts and "
            f"{r['partner_own_campaign']} accounts of its own campaigns"
        )
        t = Table()
        for col in (
            "sharing",
            "campaigns",
            "indicators (per campaign)",
            "reappeared matched",
            "... strong (2+ kinds)",
            "of flagged at home: strong",
            "honest: any match",
            "honest: strong",
            "partner's other campaigns: any",
        ):
            t.add_column(col)
        for name, m in r["methods"].items():
            t.add_row(
                name,
                str(m["campaigns"]),
                f"{m['indicators']} ({m['per_campaign']:.1f})",
                pct(m["moved_any"], r["moved"]),
                pct(m["moved_strong"], r["moved"]),
                pct(m["moved_strong_of_flagged"], m["moved_flagged_home"]),
                pct(m["honest_any"], r["partner_honest"]),
                pct(m["honest_strong"], r["partner_honest"]),
                f"{pct(m['own_campaign_any'], r['partner_own_campaign'])} / "
                f"{m['own_campaign_strong']}",
            )
        console.print(t)
        for name, m in r["methods"].items():
            console.print(
                f"{name}: {m['real_campaigns']} of {m['campaigns']} exported campaigns are real "
                f"campaigns; honest accounts matched via "
                + (
                    ", ".join(f"{k} {v}" for k, v in sorted(m["honest_false_kinds"].items()))
                    or "nothing"
                )
                + f"; {m['honest_false_from_home_fp']} of those matched a cluster the detector "
                "flagged wrongly at home"
            )
        ours = r["methods"]["ours"]
        console.print(
            "ours, kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(ours["kinds"].items()))
        )
        t = Table(title="ours, reappeared accounts by persona")
        for col in ("persona", "accounts", "flagged at home", "matched", "strong"):
            t.add_column(col)
        for p, c in ours["by_persona"].items():
            t.add_row(
                p,
                str(c.get("n", 0)),
                str(c.get("caught_home", 0)),
                str(c.get("any", 0)),
                str(c.get("strong", 0)),
            )
        console.print(t)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{r['generator']}\n{name}" for r in results for name in r["methods"]]
    caught = [
        100 * m["moved_strong"] / max(1, r["moved"]) for r in results for m in r["methods"].values()
    ]
    false = [
        100 * m["honest_any"] / max(1, r["partner_honest"])
        for r in results
        for m in r["methods"].values()
    ]
    false_strong = [
        100 * m["honest_strong"] / max(1, r["partner_honest"])
        for r in results
        for m in r["methods"].values()
    ]
    axes[0].bar(labels, caught, color="tab:red")
    axes[0].set_ylabel("% of reappeared campaign accounts")
    axes[0].set_title("caught at the partner (2+ kinds)")
    x = range(len(labels))
    axes[1].bar([i - 0.2 for i in x], false, width=0.4, label="any indicator")
    axes[1].bar([i + 0.2 for i in x], false_strong, width=0.4, label="2+ kinds")
    axes[1].set_xticks(list(x), labels)
    axes[1].set_ylabel("% of the partner's honest accounts")
    axes[1].set_title("false matches on honest traffic")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from distillguard.progress import progress_bar

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--generators", default="sim,orgs")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "intel_sharing.png")
    args = parser.parse_args(argv)
    if not (DATA / "README.md").exists():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2
    console = Console(width=170)
    results = []
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="dg-intel-bench-") as tmp,
        progress_bar(console=console) as progress,
    ):
        for g in args.generators.split(","):
            results.append(run_generator(g, Path(tmp) / g, args, progress))
    report(results, console)
    plot(results, args.plot)
    console.print(f"\n{time.perf_counter() - t0:.0f} s in all; plot -> {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
