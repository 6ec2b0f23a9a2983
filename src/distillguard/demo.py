"""The end-to-end demo behind ``make demo``: serve, watermark, detect, distil, prove.

It runs on the embedded defaults: the built-in teacher (trained here on real LLM answers and
cached under ``DISTILLGUARD_HOME``), SQLite, a throwaway state directory for everything else.
Each act prints what a provider's engineer would look at, and the demo stops cleanly.

    python -m distillguard.demo [--quick]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from distillguard.config import get_settings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

    from distillguard.gateway.process import GatewayProcess

console = Console()


@dataclass
class DemoState:
    """What one act hands the next: the running gateway, keys, files written."""

    workdir: Path
    teacher_dir: Path
    quick: bool
    gateway: GatewayProcess | None = None
    model: str = ""  # the model id the gateway serves
    keys: dict[str, str] = field(default_factory=dict)  # account name -> API key secret
    account_ids: dict[str, str] = field(default_factory=dict)  # account name -> account id
    answers: list[tuple[str, str]] = field(default_factory=list)  # (account name, answer)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def server(self) -> GatewayProcess:
        """The gateway act 1 started (the later acts talk to it)."""
        if self.gateway is None:
            raise RuntimeError("the gateway is not running: act 1 starts it")
        return self.gateway


def act(title: str) -> Callable[[Callable[[DemoState], None]], Callable[[DemoState], None]]:
    """Frame one act of the demo with a heading and its wall time."""

    def wrap(fn: Callable[[DemoState], None]) -> Callable[[DemoState], None]:
        def run(state: DemoState) -> None:
            console.rule(f"[bold]{title}")
            start = time.monotonic()
            fn(state)
            console.print(f"[dim]({time.monotonic() - start:.1f} s)[/dim]")

        run.__name__ = fn.__name__
        return run

    return wrap


# --- act 1: serve ---------------------------------------------------------------------------


@act("1. Serve the teacher through the gateway")
def serve(state: DemoState) -> None:
    from openai import OpenAI

    from distillguard.gateway.process import GatewayProcess

    gateway = GatewayProcess(
        home=state.workdir / "gateway",
        model_dir=state.teacher_dir,
        admin_token=secrets.token_urlsafe(16),
        watermark="kgw",
        env={
            "DISTILLGUARD_WATERMARK_SECRET": os.environ["DISTILLGUARD_WATERMARK_SECRET"],
            "DISTILLGUARD_POLICY_FILE": str(write_demo_policy(state.workdir)),
            # The simulated population reaches the gateway through loopback with each account's
            # own address in X-Forwarded-For: here loopback plays the trusted load balancer.
            # Never a default: a gateway trusts no proxy unless told (gateway/clientip.py).
            "DISTILLGUARD_TRUSTED_PROXIES": "127.0.0.1/32",
        },
    ).start(timeout=180)
    state.gateway = gateway
    console.print(f"gateway on {gateway.base_url} serving {state.teacher_dir.name} (KGW watermark)")

    for name in ("alice", "bob"):
        account_id, key_id, secret = gateway.create_key(name)
        state.keys[name] = secret
        state.account_ids[name] = account_id
        console.print(f"account [bold]{name}[/bold]: key {key_id}")

    questions = {
        "alice": ["Give three tips for staying healthy.", "What is the capital of France?"],
        "bob": ["Explain why the sky is blue.", "Write a short poem about the sea."],
    }
    model = OpenAI(base_url=gateway.api_url, api_key=state.keys["alice"]).models.list().data[0].id
    state.model = model
    for name, prompts in questions.items():
        client = OpenAI(base_url=gateway.api_url, api_key=state.keys[name])
        for i, prompt in enumerate(prompts):
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
            if name == "bob" and i == 0:  # one streamed answer, printed as it arrives
                console.print(f"[cyan]{name}[/cyan] asks (streamed): {prompt}")
                stream = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=96, stream=True
                )
                pieces = []
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                        console.print(chunk.choices[0].delta.content, end="", style="green")
                console.print()
                state.answers.append((name, "".join(pieces)))
            else:
                reply = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=96
                )
                text = reply.choices[0].message.content or ""
                console.print(f"[cyan]{name}[/cyan] asks: {prompt}\n[green]{text}[/green]")
                state.answers.append((name, text))

    rows = gateway.exchanges(limit=10)
    names = {account_id: name for name, account_id in state.account_ids.items()}
    table = Table(title="the exchange log (newest first)")
    for column in ("account", "endpoint", "status", "prompt tok", "compl tok", "ms", "watermark"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            names.get(str(row.get("account_id")), "-"),
            str(row.get("endpoint")),
            str(row.get("status")),
            str(row.get("prompt_tokens")),
            str(row.get("completion_tokens")),
            f"{row.get('latency_ms') or 0:.0f}",
            f"{row.get('watermark_scheme')}/{row.get('watermark_key_id')}",
        )
    console.print(table)


def write_demo_policy(workdir: Path) -> Path:
    """The built-in policy, except that linked clusters pooling chain-of-thought requests and
    harvesting parameters are throttled at once instead of only flagged for review: a
    provider's stricter choice, and one the demo's few hundred requests can show."""
    from importlib import resources

    import yaml

    policy = yaml.safe_load(
        resources.files("distillguard.monitor").joinpath("default_policy.yaml").read_text()
    )
    rules = policy["rules"]
    cluster_rules = [r for r in rules if "cluster_size_at_least" in r["when"]]
    for rule in cluster_rules:
        rule.update(action="throttle", retry_after=30)
        rules.remove(rule)
    # first rule that holds decides: the throttle goes before the milder degrade and flag
    milder = next(i for i, r in enumerate(rules) if r["action"] in ("degrade", "flag"))
    rules[milder:milder] = cluster_rules
    path = workdir / "demo-policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


# --- act 2: watermark ------------------------------------------------------------------------


@act("2. Every answer carries the provider's watermark; real LLM answers do not")
def watermark(state: DemoState) -> None:
    import orjson
    from transformers import AutoTokenizer

    from distillguard.errors import DistillGuardError
    from distillguard.watermark.detect import TextDetector

    detector = TextDetector.from_settings(
        get_settings(),
        tokenizer=AutoTokenizer.from_pretrained(str(state.teacher_dir)),
        scheme="kgw",
    )
    real = []
    for path in sorted((get_settings().require_data_dir() / "outputs").glob("*.jsonl"))[:4]:
        with path.open() as lines:
            record = orjson.loads(next(lines))
        real.append((path.stem, record["output"]))
    texts = [(f"demo answer to {who}", text) for who, text in state.answers] + real
    accounts = list(state.account_ids.values())
    names = {account_id: name for name, account_id in state.account_ids.items()}
    results = detector.detect_batch([text for _, text in texts], accounts=accounts)
    table = Table(title="watermark detection (KGW, exact binomial test, deduplicated pairs)")
    for column in ("text", "tokens scored", "p-value", "verdict", "best account (Holm p)"):
        table.add_column(column)
    for (label, _), result in zip(texts, results, strict=True):
        if isinstance(result, DistillGuardError):
            table.add_row(label, "-", "-", f"[yellow]{result.message}[/yellow]", "-")
            continue
        marked = result.p_value < 1e-3
        best = result.accounts[0] if result.accounts else None
        account = "-"
        if marked and best is not None:
            # A short answer may carry too little of the account's secondary signal to name it.
            named = best.p_value_corrected < 1e-2
            account = f"{names.get(best.account, best.account)} ({best.p_value_corrected:.1e})"
            account = account if named else f"[dim]none significant; best {account}[/dim]"
        table.add_row(
            label,
            str(result.num_scored),
            f"{result.p_value:.1e}",
            "[green]watermarked[/green]" if marked else "not watermarked",
            account,
        )
    console.print(table)


# --- act 3: detect and enforce ----------------------------------------------------------------


@act("3. Simulated users and campaigns hit the gateway: campaigns are caught live")
def monitor(state: DemoState) -> None:
    from collections import Counter

    from distillguard.sim.live import LiveConfig, run_live
    from distillguard.sim.simulate import SimConfig
    from distillguard.traffic import read_labels, read_traffic

    gateway = state.server
    traffic, labels = state.workdir / "live-traffic.jsonl", state.workdir / "live-labels.jsonl"
    population = SimConfig(accounts=12 if state.quick else 24, campaigns=2, seed=7, split="test")
    live = LiveConfig(
        base_url=gateway.base_url,
        admin_token=gateway.admin_token,
        max_requests=240 if state.quick else 480,
        concurrency=4,
        max_tokens=8,
    )
    console.print(
        f"{population.accounts} honest accounts (people, power users, templated apps) and "
        f"{population.campaigns} campaigns (test split of the real prompt sets) send "
        f"{live.max_requests} requests through the openai SDK; the online monitor scores "
        "every request and applies the policy (the built-in one, but linked clusters that "
        "pool chain-of-thought and harvesting are throttled, not just flagged)"
    )
    result = run_live(
        population, live, data_dir=get_settings().require_data_dir(), out=traffic, labels=labels
    )
    persona = {label.account_id: label.persona for label in read_labels(labels)}
    accounts: dict[str, set[str]] = {}
    status: dict[str, Counter[str]] = {}
    for record in read_traffic(traffic):
        kind = persona.get(record.account_id) or "?"
        accounts.setdefault(kind, set()).add(record.account_id)
        outcome = {200: "served", 403: "refused", 429: "refused"}.get(record.status, "failed")
        status.setdefault(kind, Counter())[outcome] += 1
    flags = gateway.admin_get("/flags")["data"]
    flagged = Counter(persona.get(flag["account_id"], "?") for flag in flags)
    table = Table(title=f"{result.sent} live requests by persona")
    for column in ("persona", "accounts", "acted on", "served", "refused (429/403)", "failed"):
        table.add_column(column)
    for kind in sorted(accounts):
        style = "red" if kind.startswith("campaign") and flagged[kind] else None
        table.add_row(
            kind,
            str(len(accounts[kind])),
            str(flagged[kind]),
            str(status[kind]["served"]),
            str(status[kind]["refused"]),
            str(status[kind]["failed"]),
            style=style,
        )
    console.print(table)
    # one line per distinct decision (a cluster's members share theirs)
    distinct = list({(f["action"], tuple(f.get("reasons", []))): f for f in flags}.values())
    console.print(
        f"GET /admin/flags lists {len(flags)} accounts acted on ({len(distinct)} distinct "
        "decisions); the first ones:"
    )
    for flag in distinct[:4]:
        reasons = "; ".join(flag.get("reasons", [])[:2])
        cluster = f", cluster of {flag['cluster_size']}" if flag.get("cluster_size", 1) > 1 else ""
        console.print(
            f"  {persona.get(flag['account_id'], flag['account_id'])}: {flag['action']}"
            f"{cluster} (score {flag.get('score', 0):.2f}) - {reasons}"
        )
    share_campaign(state, traffic, flags)
    lift_a_false_positive(gateway, persona)


def share_campaign(state: DemoState, traffic: Path, flags: list[dict]) -> None:
    """Export what was caught as a STIX 2.1 bundle for other providers (docs/intel.md)."""
    from distillguard.intel.fingerprints import CommunityKey
    from distillguard.intel.indicators import extract_intel
    from distillguard.intel.stix import build_bundle
    from distillguard.traffic import Verdict, read_traffic

    verdicts = [
        Verdict(f["account_id"], min(1.0, f["score"]), True, f["cluster_id"]) for f in flags
    ]
    key = CommunityKey.from_setting(get_settings().intel_key)
    intel = extract_intel(
        verdicts, read_traffic(traffic), key, producer="demo provider", created=time.time()
    ).intel
    out = state.files["bundle"] = state.workdir / "campaign-bundle.json"
    out.write_text(build_bundle(intel).serialize(pretty=True))
    console.print(
        f"shared with partners: {len(intel.campaigns)} campaigns, "
        f"{len(intel.indicators)} indicators (keyed hashes, no user content) "
        f"as STIX 2.1 -> {out.name}"
    )


def lift_a_false_positive(gateway, personas: Mapping[str, str | None]) -> None:
    """Every action expires and can be lifted with a reason; the audit log says who did what.
    An honest account the policy acted on is lifted; when the policy spared every honest
    account, a reviewer's mistaken flag on a legitimate app is (the same path)."""
    persona = {account: kind or "?" for account, kind in personas.items()}
    active = gateway.admin_get("/actions?state=active&limit=1000")["data"]
    wrong = [
        a for a in active if not persona.get(a["account_id"], "campaign").startswith("campaign")
    ]
    if wrong:
        action = wrong[0]
        who = persona.get(action["account_id"], action["account_id"])
        console.print(f"the policy acted on an honest account ({who}): {action['action']}")
    else:
        honest = sorted(a for a, p in persona.items() if not p.startswith("campaign"))
        apps = [a for a in honest if persona[a].startswith("app_")] or honest
        if not apps:
            return
        action = gateway.admin_post(
            "/actions",
            {
                "account": apps[0],
                "action": "flag",
                "reason": "reviewer: machine-like traffic, looks like a harvest",
                "ttl_s": 86_400,
            },
        )
        who = persona[apps[0]]
        console.print(f"no honest account was acted on; a reviewer flags {who} by mistake")
    gateway.admin_post(
        f"/actions/{action['id']}/lift",
        {"reason": "false positive: a legitimate customer serving its own users"},
    )
    table = Table(title=f"audit log of {who} (POST /admin/actions/{action['id']}/lift)")
    for column in ("event", "who", "why"):
        table.add_column(column)
    for event in gateway.admin_get(f"/audit?account={action['account_id']}")["data"]:
        if event["event"].startswith("action."):
            table.add_row(event["event"], event["actor"], event["reason"] or "-")
    console.print(table)


# --- act 4: distil ---------------------------------------------------------------------------


@act("4. A campaign harvests the teacher through the API and distils a student")
def distill(state: DemoState) -> None:
    from distillguard.distill.campaign import run_campaign
    from distillguard.distill.trainers import DistillConfig
    from distillguard.gateway.process import GatewayProcess

    samples = 64 if state.quick else 160
    console.print(
        "Through act 3's monitored endpoint a harvest like this one is throttled (429) before "
        "it finishes. This campaign uses an endpoint the provider runs without the online "
        "monitor (a partner's dedicated deployment: same model, same watermark), so it gets "
        "through - the case the proof is for."
    )
    console.print(
        f"account [bold]mallory[/bold] harvests {samples} answers with their top-5 logprobs "
        "(gray-box), then trains a tiny student on them; a same-size baseline is trained on "
        "another model's answers to the same prompts, never seeing the teacher"
    )
    unmonitored = GatewayProcess(
        home=state.workdir / "gateway-partner",
        model_dir=state.teacher_dir,
        admin_token=secrets.token_urlsafe(16),
        watermark="kgw",
        env={
            "DISTILLGUARD_WATERMARK_SECRET": os.environ["DISTILLGUARD_WATERMARK_SECRET"],
            "DISTILLGUARD_ONLINE_MONITOR": "false",
        },
    ).start(timeout=180)
    # Kept after the demo (the evidence report's commands point here); fresh for every run,
    # since the accounts it harvested through are new each time.
    work_dir = get_settings().home / "demo" / "campaign"
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        account_id, _, secret = unmonitored.create_key("mallory", rpm=10_000)
        state.account_ids["mallory"] = account_id
        result = run_campaign(
            api_url=unmonitored.api_url,
            api_key=secret,
            teacher_dir=state.teacher_dir,
            work_dir=work_dir,
            data_dir=get_settings().require_data_dir(),
            samples=samples,
            mode="topk-kd",
            top_logprobs=5,
            config=DistillConfig(max_steps=120 if state.quick else 240, max_length=192),
        )
    finally:
        unmonitored.stop()
    state.files.update(
        harvest=result.dataset, student=result.student_dir, baseline=result.baseline_dir
    )
    table = Table(title="agreement with the teacher on held-out prompts")
    for column in ("model", "top-1 agreement", "KL(teacher||model)", "loss on teacher answers"):
        table.add_column(column)
    for label, report in (("distilled student", result.student), ("baseline", result.baseline)):
        table.add_row(
            label,
            f"{report.top1_agreement:.3f}",
            f"{report.kl_teacher_student:.3f}",
            f"{report.held_out_loss:.3f}",
        )
    console.print(table)
    console.print(
        "The student sits far closer to the teacher's distribution (KL, loss) than a model of "
        "its size that never saw it. Its top-1 agreement is measured against the *unmarked* "
        "teacher: the watermark bias it learned from the API's answers shows up there."
    )


# --- act 5: prove ----------------------------------------------------------------------------


@act("5. Prove it: the student is radioactive, the control is not; the evidence report")
def prove(state: DemoState) -> None:
    import json
    import subprocess

    out_dir = get_settings().home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    accounts = ",".join(state.account_ids.values())
    names = {account_id: name for name, account_id in state.account_ids.items()}
    evidence = []
    suspects = (("student", state.files["student"]), ("control", state.files["baseline"]))
    for label, suspect in suspects:
        path = out_dir / f"evidence-{label}.json"
        command = [
            sys.executable,
            "-m",
            "distillguard",
            "prove",
            "radioactivity",
            "--suspect",
            str(suspect),
            "--harvest",
            str(state.files["harvest"]),
            "--tokenizer",
            str(state.teacher_dir),
            "--accounts",
            accounts,
            "--out",
            str(path),
        ]
        console.print(f"[dim]$ distillguard {' '.join(command[3:])}[/dim]")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        evidence.append(path)
        report = json.loads(path.read_text())
        for test in report["tests"]:
            verdict = "[red]radioactive[/red]" if test["p_value"] < 1e-3 else "not flagged"
            console.print(
                f"  {label}: {test['test']:<18} log10 p = {test['log10_p_value']:8.1f} "
                f"over {test['num_scored']} scored units -> {verdict}"
            )
        for match in report.get("accounts", [])[:2]:
            if match["p_holm"] < 1e-3:
                console.print(
                    f"  {label}: learned from account [bold]"
                    f"{names.get(match['account'], match['account'])}[/bold] "
                    f"(Holm p = {match['p_holm']:.1e})"
                )
    html = out_dir / "report.html"
    keys = out_dir / "signing-key"
    prove = [sys.executable, "-m", "distillguard", "prove"]
    subprocess.run(
        [*prove, "keygen", "--out-dir", str(keys), "--force"], check=True, capture_output=True
    )
    private_key = keys / "evidence-signing.key"  # beside it: evidence-signing.pub
    command = [*prove, "report", "--out", str(html), "--signing-key", str(private_key)]
    for path in evidence:
        command += ["--evidence", str(path)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    console.print(f"evidence report: [bold]{html}[/bold] (and {html.with_suffix('.json').name})")
    # The chain of custody: the signed JSON and every input's SHA-256 check out. The inputs
    # are handed over as a reviewer would receive them: every file the report lists (the
    # evidence, the harvest, the suspects' model files), from where the demo wrote them.
    listed = json.loads(html.with_suffix(".json").read_text())["inputs"]
    verified = subprocess.run(
        [
            *prove,
            "verify",
            str(html.with_suffix(".json")),
            *(f"--input={i['path']}" for i in listed),
        ],
        capture_output=True,
        text=True,
    )
    verdict = "verified" if verified.returncode == 0 else f"NOT verified: {verified.stderr}"
    console.print(f"signature and input hashes ({private_key.name}): {verdict.strip()}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:
        shot = out_dir / "report.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={state.workdir / 'chromium'}",
                "--window-size=1200,2400",
                f"--screenshot={shot}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        console.print(f"opened in headless Chromium; screenshot: {shot}")
    else:
        console.print(f"open it in a browser: {html.as_uri()}")


# --- act 6: the operator console --------------------------------------------------------------


@act("6. The operator console: what the analyst sees")
def operator_console(state: DemoState) -> None:
    from distillguard.gateway.console.browser import browser_available, save_screenshots

    gateway = state.server
    flags = gateway.admin_get("/flags")["data"]
    caught = flags[0]["account_id"] if flags else None
    problem = browser_available()
    if problem:
        console.print(f"[yellow]console screenshots skipped: {problem}[/yellow]")
    else:
        out_dir = get_settings().home / "console"
        for shot in save_screenshots(
            gateway.base_url, gateway.admin_token, out_dir, account=caught
        ):
            console.print(f"screenshot: {shot}")
    console.print(
        f"console: [bold]{gateway.base_url}/console[/bold] (sign in with the admin token)"
    )
    if caught:
        console.print(
            f"the campaign it caught, on view: [bold]{gateway.base_url}/console/accounts/"
            f"{caught}[/bold]"
        )


# --- the driver -----------------------------------------------------------------------------

ACTS: list[Callable[[DemoState], None]] = [
    serve,
    watermark,
    monitor,
    distill,
    prove,
    operator_console,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs in every act")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The demo's own provider secret: a real deployment sets its own and keeps it.
    os.environ.setdefault("DISTILLGUARD_WATERMARK_SECRET", "demo-" + secrets.token_hex(16))
    os.environ.setdefault("DISTILLGUARD_INTEL_KEY", "demo-" + secrets.token_hex(16))
    settings = get_settings()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # rich shows the demo's own progress
    console.print(
        Panel.fit(
            "distillguard demo: a provider serves its model, marks every answer, catches a "
            "distillation campaign, and proves a student learned from it.",
            title="distillguard",
        )
    )
    from distillguard.models.teacher import default_teacher_dir

    console.rule("[bold]0. The teacher")
    console.print(f"cached teacher under {settings.home / 'models'} (built on first run)")
    teacher_dir = default_teacher_dir(settings, progress=True)
    with tempfile.TemporaryDirectory(prefix="distillguard-demo-") as tmp:
        state = DemoState(workdir=Path(tmp), teacher_dir=teacher_dir, quick=args.quick)
        try:
            for step in ACTS:
                step(state)
        finally:
            if state.gateway is not None:
                state.gateway.stop()
                console.print("gateway stopped")
    console.rule("[bold green]demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
