"""Evidence report: one self-contained HTML page (and the same data as JSON) from evidence files.

Inputs are the JSON files that ``prove radioactivity``, ``prove attribute`` and the
dose-response benchmark write (``"test"`` says which), plus optionally the monitor's verdicts
(``account_id``, ``cluster_id``, ``reasons``) to name the accounts and campaign clusters
involved. Plots are drawn with matplotlib and embedded as base64 PNG, the CSS is inline in
``report.html``: the page opens offline, from a mail attachment, years later.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import InputError

TEMPLATE = Path(__file__).with_name("report.html")
KNOWN_TESTS = ("radioactivity", "attribution", "dose-response")


@dataclass(frozen=True)
class ReportData:
    title: str
    generated: str
    verdict: str
    verdict_class: str  # positive | negative | neutral
    evidence: tuple[dict[str, Any], ...]
    verdicts: tuple[dict[str, Any], ...]  # monitor verdicts of the accounts involved
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "generated": self.generated,
            "verdict": self.verdict,
            "alpha": self.alpha,
            "evidence": list(self.evidence),
            "verdicts": list(self.verdicts),
        }


# --------------------------------------------------------------------------- inputs


def load_evidence(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Read evidence JSON files; each must carry a known ``"test"`` field."""
    if not paths:
        raise InputError("give at least one --evidence JSON file")
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"evidence file not found: {path}")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("test") not in KNOWN_TESTS:
            raise InputError(
                f"{path}: not a distillguard evidence file (needs a 'test' field, "
                f"one of {KNOWN_TESTS})"
            )
        data.setdefault("source", str(path))
        out.append(data)
    return out


def load_verdicts(path: Path | None, accounts: Sequence[str]) -> list[dict[str, Any]]:
    """Monitor verdicts of the given accounts (all flagged accounts when none are named)."""
    if path is None:
        return []
    from distillguard.traffic import read_verdicts

    reader = read_verdicts(path)
    rows = [v for v in reader if not accounts or v.account_id in set(accounts)]
    return [
        {
            "account_id": v.account_id,
            "score": v.score,
            "flagged": v.flagged,
            "cluster_id": v.cluster_id,
            "reasons": list(v.reasons),
        }
        for v in rows
        if accounts or v.flagged
    ]


def build_report(
    evidence: Sequence[dict[str, Any]],
    *,
    verdicts: Sequence[dict] = (),
    title: str | None = None,
    alpha: float = 1e-3,
) -> ReportData:
    """Decide the headline from the evidence: any radioactivity test below ``alpha`` or an
    attribution verdict makes it positive."""
    hits = []
    for ev in evidence:
        if ev["test"] == "radioactivity":
            for t in ev.get("tests", []):
                if t["p_value"] < alpha:
                    hits.append(f"{ev['suspect']}: {t['test']} p = {_p(t)}")
        elif ev["test"] == "attribution" and ev.get("verdict"):
            hits.append(f"{ev['suspect']}: answers attributed to {ev['verdict']}")
    suspects = sorted({str(ev.get("suspect", "")) for ev in evidence if ev.get("suspect")})
    if hits:
        verdict = "Evidence of distillation: " + "; ".join(hits)
        cls = "positive"
    elif any(ev["test"] in ("radioactivity", "attribution") for ev in evidence):
        verdict = f"No test reached the level alpha = {alpha:g}: no evidence of distillation."
        cls = "negative"
    else:
        verdict = "Benchmark evidence only (no suspect tested)."
        cls = "neutral"
    return ReportData(
        title=title or f"Distillation evidence: {', '.join(suspects) or 'benchmark'}",
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        verdict=verdict,
        verdict_class=cls,
        evidence=tuple(evidence),
        verdicts=tuple(verdicts),
        alpha=alpha,
    )


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _figure(width: float = 6.4, height: float = 3.2, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))


def plot_null(test: dict[str, Any]) -> str:
    """-log10 p under random keys (the null) against the observed -log10 p."""
    null = [-x for x in test.get("null_log10_p") or []]
    observed = -test["log10_p_value"]
    fig, (ax, qq) = _figure(9.0, 3.0, ncols=2)
    if null:
        ax.hist(
            null,
            bins=min(30, max(5, len(null) // 4)),
            color="#8da0cb",
            label=f"{len(null)} random keys (null)",
        )
    ax.axvline(observed, color="#c62828", lw=2, label=f"our key: {observed:.1f}")
    ax.set_xlabel("-log10 p")
    ax.set_ylabel("count")
    ax.set_title(test["test"])
    ax.legend(fontsize=8)
    if null:
        import numpy as np

        p = np.sort(10.0 ** (-np.asarray(null)))
        expected = (np.arange(1, p.size + 1) - 0.5) / p.size
        qq.plot(expected, p, ".", color="#4c72b0", label="random-key p-values")
        qq.plot([0, 1], [0, 1], "--", color="grey", label="uniform")
        qq.set_xlabel("uniform quantile")
        qq.set_ylabel("p-value")
        qq.set_title("calibration (QQ)")
        qq.legend(fontsize=8)
    else:
        qq.text(0.5, 0.5, "no random-key run\n(--random-keys N)", ha="center", va="center")
        qq.set_axis_off()
    return _png(fig)


def plot_attribution(ev: dict[str, Any]) -> str:
    fig, ax = _figure(7.0, 3.2)
    null = ev.get("null_effects") or []
    if null:
        ax.hist(
            null,
            bins=max(5, min(30, len(null) // 2)),
            color="#8da0cb",
            label="effects of pairs among the candidates (null pool)",
        )
    for c in ev["candidates"][:3]:
        color = "#c62828" if c["attributed"] else "#555555"
        ax.axvline(c["effect"], color=color, lw=2, label=f"{c['name']} (z={c['z']:.1f})")
    ax.set_xlabel("relational effect E(suspect, candidate)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_dose_response(ev: dict[str, Any]) -> str:
    fig, ax = _figure(7.5, 3.8)
    for series in ev["series"]:
        xs = [max(s, 0.2) for s in series["shares"]]
        ax.plot(xs, [-v for v in series["log10_p"]], "o-", label=series["label"])
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=10)  # linear where decisions happen, log above
    ax.set_ylim(bottom=0)
    ax.set_xlabel("watermarked share of the training data (%; 0 % drawn at 0.2)")
    ax.set_ylabel("-log10 p")
    ax.axhline(3, color="grey", ls="--", lw=1)
    ax.axhline(6, color="grey", ls=":", lw=1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(ev.get("title", "dose-response"))
    return _png(fig)


# --------------------------------------------------------------------------- HTML
# The page is ``report.html``, a Jinja2 template with autoescape on: every string from the
# evidence (suspect names, account and key ids, commands) is escaped by the template, never
# by hand. This module only turns evidence into cards: headings, notes, tables and plots.


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[str | int | float, ...], ...]
    hits: tuple[bool, ...] = ()  # rows to highlight (below alpha)


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" | "note" | "table" | "plot" | "command"
    text: str = ""
    code: str = ""  # heading: the part shown as code (a suspect's name)
    after: str = ""  # heading: text after the code part
    table: Table | None = None


def _p(t: dict[str, Any]) -> str:
    lp = t.get("log10_p_value")
    if lp is None:
        return f"{t.get('p_value', float('nan')):.3g}"
    return f"{10**lp:.3g}" if lp > -300 else f"10^{lp:.1f}"


def _fmt(x: float | int) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], hits: Sequence[bool] = ()) -> Block:
    return Block("table", table=Table(tuple(head), tuple(tuple(r) for r in rows), tuple(hits)))


def _command(ev: dict[str, Any]) -> list[Block]:
    cmd = ev.get("command")
    return [Block("command", text=str(cmd))] if cmd else []


def _radioactivity_card(ev: dict[str, Any], alpha: float) -> list[Block]:
    served = ev.get("served_contexts")
    note = (
        f"scheme {ev['scheme']}, key id {ev['key_id']}; {ev.get('texts', 0):,} texts, "
        f"{ev.get('tokens', 0):,} tokens"
        + (f", restricted to {served:,} served contexts" if served else "")
    )
    blocks = [
        Block(
            "heading",
            text="Radioactivity of ",
            code=str(ev["suspect"]),
            after=f" ({ev['mode']} mode)",
        ),
        Block("note", text=note),
    ]
    rows, hits = [], []
    for t in ev["tests"]:
        cal = t.get("calibration") or {}
        rows.append(
            [
                t["test"],
                "exact" if t["exact"] else "z (analytic variance)",
                t["num_scored"],
                t["statistic"],
                t["expected"],
                t["z_score"],
                _p(t),
                cal.get("keys", float("nan")),
                cal.get("ks_p", float("nan")),
                cal.get("fpr_0.001", float("nan")),
            ]
        )
        hits.append(t["p_value"] < alpha)
    head = [
        "test",
        "tail",
        "units scored",
        "statistic",
        "null expectation",
        "z",
        "p-value",
        "random keys",
        "KS p (uniform)",
        "FPR at 1e-3",
    ]
    blocks.append(_table(head, rows, hits))
    blocks += [Block("plot", text=plot_null(t)) for t in ev["tests"]]
    if ev.get("accounts"):
        blocks.append(Block("heading", text="Accounts whose answers the suspect learned from"))
        arows = [
            [
                a["account"],
                a.get("cluster_id") or "",
                a["test"],
                a["num_scored"],
                a["z_score"],
                _p(a),
                a["p_holm"],
            ]
            for a in ev["accounts"]
        ]
        ahead = ["account", "campaign cluster", "test", "units", "z", "p", "p (Holm over accounts)"]
        blocks.append(_table(ahead, arows, [a["p_holm"] < alpha for a in ev["accounts"]]))
    return blocks + _command(ev)


def _attribution_card(ev: dict[str, Any]) -> list[Block]:
    verdict = ev.get("verdict") or "none of these"
    blocks = [
        Block(
            "heading", text="Teacher attribution of ", code=str(ev["suspect"]), after=f": {verdict}"
        ),
        Block(
            "note",
            text=f"{ev['matched_prompts']:,} of {ev['suspect_prompts']:,} prompts "
            "matched by instruction text; model-level p from a predictive t-test against "
            "pairs among the other candidates, Holm-corrected; prompt-level p from a "
            "label permutation test.",
        ),
    ]
    rows = [
        [
            c["rank"],
            c["name"],
            c["effect"],
            c["z"],
            c["p_model_holm"],
            c["p_prompt"],
            "yes" if c["attributed"] else "",
        ]
        for c in ev["candidates"]
    ]
    head = ["rank", "candidate", "effect", "z", "p (Holm)", "p (prompt perm.)", "attributed"]
    blocks.append(_table(head, rows, [c["attributed"] for c in ev["candidates"]]))
    blocks.append(Block("plot", text=plot_attribution(ev)))
    return blocks + _command(ev)


def _dose_card(ev: dict[str, Any]) -> list[Block]:
    blocks = [
        Block("heading", text=str(ev.get("title", "Dose-response"))),
        Block("plot", text=plot_dose_response(ev)),
    ]
    shares = sorted({s for series in ev["series"] for s in series["shares"]})
    rows = []
    for series in ev["series"]:
        by = dict(zip(series["shares"], series["log10_p"], strict=True))
        rows.append([series["label"], *[by.get(s, float("nan")) for s in shares]])
    blocks.append(Block("note", text="log10 p per watermarked share (%)"))
    blocks.append(_table(["student / test", *[f"{s:g} %" for s in shares]], rows))
    calibration = ev.get("calibration") or {}
    if calibration and all(isinstance(v, dict) for v in calibration.values()):
        blocks.append(Block("note", text="Null calibration: the same tests under random keys"))
        crows = [
            [
                k,
                v.get("null_pvalues", 0),
                v.get("fpr_1e-3", float("nan")),
                v.get("fpr_0.01", float("nan")),
                v.get("ks_p", float("nan")),
            ]
            for k, v in calibration.items()
        ]
        chead = ["test", "null p-values", "FPR at 1e-3", "FPR at 0.01", "KS p (uniform)"]
        blocks.append(_table(chead, crows))
    elif calibration:
        blocks.append(Block("note", text=f"Null calibration: {calibration}"))
    return blocks + _command(ev)


def _verdicts_table(verdicts: Sequence[dict[str, Any]]) -> Block | None:
    if not verdicts:
        return None
    rows = [
        [v["account_id"], v.get("cluster_id") or "", v["score"], "; ".join(v.get("reasons") or [])]
        for v in verdicts
    ]
    return _table(["account", "cluster", "monitor score", "reasons"], rows)


def _summary_table(evidence: Sequence[dict[str, Any]], alpha: float) -> Block | None:
    """One line per suspect and test: the strongest p-value and what it means."""
    rows, hits = [], []
    for ev in evidence:
        if ev["test"] == "radioactivity":
            for t in ev["tests"]:
                hit = t["p_value"] < alpha
                finding = "learned from our answers" if hit else "not flagged"
                rows.append([str(ev["suspect"]), f"radioactivity / {t['test']}", _p(t), finding])
                hits.append(hit)
        elif ev["test"] == "attribution":
            top = ev["candidates"][0]
            finding = f"taught by {ev['verdict']}" if ev.get("verdict") else "none of these"
            rows.append([str(ev["suspect"]), "attribution", f"{top['p_model_holm']:.3g}", finding])
            hits.append(bool(ev.get("verdict")))
    if not rows:
        return None
    return _table(["suspect", "test", "p-value", "finding"], rows, hits)


def render_html(report: ReportData) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from distillguard import __version__

    groups = []
    for kind, heading in (
        ("radioactivity", "Radioactivity tests"),
        ("attribution", "Watermark-free attribution"),
        ("dose-response", "Dose-response"),
    ):
        items = [ev for ev in report.evidence if ev["test"] == kind]
        if not items:
            continue
        if kind == "radioactivity":
            cards = [_radioactivity_card(ev, report.alpha) for ev in items]
        elif kind == "attribution":
            cards = [_attribution_card(ev) for ev in items]
        else:
            cards = [_dose_card(ev) for ev in items]
        groups.append({"heading": heading, "cards": cards})
    settings = [
        {
            "source": str(ev.get("source", ev["test"])),
            "json": json.dumps(ev.get("settings") or ev.get("config") or {}, indent=1),
        }
        for ev in report.evidence
    ]
    env = Environment(
        loader=FileSystemLoader(TEMPLATE.parent),
        autoescape=select_autoescape(["html"]),
        keep_trailing_newline=True,
    )
    env.filters["cell"] = lambda c: _fmt(c) if isinstance(c, int | float) else str(c)
    return env.get_template(TEMPLATE.name).render(
        title=report.title,
        generated=report.generated,
        version=__version__,
        num_evidence=len(report.evidence),
        verdict=report.verdict,
        verdict_class=report.verdict_class,
        summary=_summary_table(report.evidence, report.alpha),
        groups=groups,
        verdicts=_verdicts_table(report.verdicts),
        settings=settings,
    )


def write_report(report: ReportData, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and the same data as JSON beside it; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(report.to_dict(), indent=1, default=str), encoding="utf-8")
    return out, json_path
