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

from distillguard import __version__
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
    statement: str = ""  # the claim, test, p-value and meaning, for a non-specialist reader
    inputs: tuple[dict[str, Any], ...] = ()  # every input file: name, bytes, SHA-256
    key_ids: tuple[str, ...] = ()  # watermark key ids involved (never a key or secret)
    tool_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "generated": self.generated,
            "tool": "distillguard",
            "tool_version": self.tool_version,
            "verdict": self.verdict,
            "statement": self.statement,
            "alpha": self.alpha,
            "inputs": list(self.inputs),
            "key_ids": list(self.key_ids),
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
    inputs: Sequence[dict[str, Any]] = (),
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
        statement=plain_statement(evidence, alpha),
        inputs=tuple(inputs) + _evidence_inputs(evidence, inputs),
        key_ids=tuple(
            sorted({f"{ev.get('scheme', '?')}:{ev['key_id']}" for ev in evidence if "key_id" in ev})
        ),
        tool_version=__version__,
    )


def _evidence_inputs(
    evidence: Sequence[dict[str, Any]], listed: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], ...]:
    """The inputs each evidence file declares it was computed from (harvest, suspect model
    files), named with the evidence that used them; each distinct file once."""
    seen = {(str(i.get("name")), str(i.get("sha256"))) for i in listed}
    out = []
    for ev in evidence:
        for item in ev.get("inputs") or []:
            if not isinstance(item, dict) or not {"name", "sha256"} <= set(item):
                raise InputError(f"{ev.get('source', 'evidence')}: malformed input entry {item!r}")
            key = (str(item["name"]), str(item["sha256"]))
            if key in seen:
                continue
            seen.add(key)
            out.append({**item, "via": Path(str(ev.get("source", ev["test"]))).name})
    return tuple(out)


def _odds(p: float) -> str:
    if p <= 0:
        return "less than once in 10^300 attempts"
    n = 1.0 / p
    return (
        f"about once in {n:,.0f} attempts"
        if n < 1e6
        else f"about once in 10^{math.log10(n):.0f} attempts"
    )


def _strongest(evidence: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (evidence, test or candidate) with the smallest p-value over all evidence."""
    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    for ev in evidence:
        if ev["test"] == "radioactivity":
            items = [(float(t["p_value"]), t) for t in ev.get("tests", [])]
        elif ev["test"] == "attribution":
            items = [(float(c["p_holm"]), c) for c in ev.get("candidates", [])]
        else:
            items = []
        for p, item in items:
            if best is None or p < best[0]:
                best = (p, ev, item)
    return None if best is None else (best[1], best[2])


def plain_statement(evidence: Sequence[dict[str, Any]], alpha: float) -> str:
    """One paragraph a lawyer can read: the claim, the test, the p-value and its meaning."""
    found = _strongest(evidence)
    if found is None:
        return (
            "This report holds benchmark measurements only; it makes no claim about any "
            "particular model."
        )
    ev, item = found
    suspect = str(ev.get("suspect", "the suspect model"))
    if ev["test"] == "radioactivity":
        p = float(item["p_value"])
        claim = (
            f"Claim: the model '{suspect}' was trained on answers produced by our service. "
            f"Our answers carry a hidden statistical pattern (watermark scheme {ev['scheme']}, "
            f"key id {ev['key_id']}) that does not change what they say. "
            f"Test: we measured how often the text of '{suspect}' follows that pattern "
            f"({item['test']}, {item['num_scored']:,} units scored); a model that never learned "
            f"from our answers follows it only by chance. The same test run with random keys "
            f"is shown below as a check that chance behaves as the test assumes."
        )
    else:
        p = float(item["p_holm"])
        claim = (
            f"Claim: the answers of '{suspect}' were learned from the answers of "
            f"'{item['name']}'. Test: a classifier learned the writing habits of each of "
            f"{len(ev['candidates'])} candidate models from their own answers and scored "
            f"the answers of '{suspect}'; the score for '{item['name']}' is compared with the "
            f"scores that unrelated models receive, and corrected (Holm) for testing "
            f"{len(ev['candidates'])} candidates at once."
        )
    meaning = (
        f" Result: p = {p:.3g}. Meaning: if the claim were false, a result at least this "
        f"extreme would arise by chance {_odds(p)}. "
    )
    if p < alpha:
        meaning += (
            f"This is below the level of {alpha:g} fixed before the test, so the report "
            f"supports the claim. A small p-value measures how unlikely chance is; it does not "
            f"by itself say how much of the model's training came from us."
        )
    else:
        meaning += (
            f"This is not below the level of {alpha:g} fixed before the test, so the report "
            f"does not support the claim (which does not prove the opposite)."
        )
    return claim + meaning


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
    null = ev.get("null_shares") or []
    if null:
        ax.hist(
            null,
            bins=max(5, min(30, len(null) // 4)),
            color="#8da0cb",
            label="shares of held-out unrelated models (null)",
        )
    for c in ev["candidates"][:3]:
        color = "#c62828" if c["attributed"] else "#555555"
        ax.axvline(c["share"], color=color, lw=2, label=f"{c['name']} (z={c['z']:.1f})")
    ax.set_xlabel("share of the suspect's answers assigned to the candidate")
    ax.set_ylabel("held-out model x candidate")
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
    mode = "the suspect's own prompts" if ev.get("same_prompts") else "other prompts"
    blocks = [
        Block(
            "heading", text="Teacher attribution of ", code=str(ev["suspect"]), after=f": {verdict}"
        ),
        Block(
            "note",
            text=f"{ev['suspect_prompts']:,} answers of the suspect; candidates learned from "
            f"their answers to {mode}. Share: the mean probability a classifier of the "
            "candidates' writing habits gives each candidate over the suspect's answers; p from "
            "a predictive t-test against the shares of held-out unrelated models, "
            "Holm-corrected across candidates. A significant share means the suspect's text "
            "resembles the candidate's; text alone does not say who learned from whom.",
        ),
    ]
    if ev.get("sibling_note"):
        blocks.append(Block("note", text=str(ev["sibling_note"])))
    rows = [
        [
            c["rank"],
            c["name"],
            c["family"],
            c["share"],
            c["null_mean"],
            c["z"],
            c["p_holm"],
            "yes" if c["attributed"] else "",
        ]
        for c in ev["candidates"]
    ]
    head = ["rank", "candidate", "family", "share", "null mean", "z", "p (Holm)", "significant"]
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
            rows.append([str(ev["suspect"]), "attribution", f"{top['p_holm']:.3g}", finding])
            hits.append(bool(ev.get("verdict")))
    if not rows:
        return None
    return _table(["suspect", "test", "p-value", "finding"], rows, hits)


def render_html(report: ReportData, signature: dict[str, Any] | None = None) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

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
        statement=report.statement,
        inputs=report.inputs,
        key_ids=report.key_ids,
        signature=signature,
    )


def write_report(
    report: ReportData, out: Path, *, signing_key_file: Path | None = None
) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and the same data as JSON beside it; returns both paths.

    With ``signing_key_file`` the JSON carries an ed25519 signature over its canonical form
    (``distillguard prove verify`` checks it) and the page shows the key's fingerprint.
    """
    from distillguard.forensics.custody import sign_document

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Signed after a JSON round trip, so the verifier sees exactly the values that were signed.
    document = json.loads(json.dumps(report.to_dict(), default=str))
    if signing_key_file is not None:
        document = sign_document(document, signing_key_file)
    out.write_text(render_html(report, document.get("signature")), encoding="utf-8")
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return out, json_path
