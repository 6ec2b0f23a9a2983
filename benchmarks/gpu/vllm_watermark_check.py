"""GPU check of the vLLM plugin: a real ``vllm serve`` with distillguard installed marks answers.

NOT run yet: no GPU was lent to the session that wrote it (see docs/watermark-engines.md).
Run through ``vllm_watermark_check.sh`` (installs vLLM and distillguard first). Steps:

1. start ``vllm serve MODEL`` *without* ``DISTILLGUARD_WATERMARK_SECRET``: the engine must
   refuse to start, naming the variable (the plugin is loaded through its entry point);
2. start it with the secret (scheme from ``--scheme``) on 127.0.0.1;
3. send ``--requests`` chat requests through the official ``openai`` SDK, each with
   ``extra_body={"vllm_xargs": {"distillguard_account": acct}}``, at T = 0, 0.7 and 1,
   ``--max-tokens`` tokens, ``return_token_ids`` asked (text is re-tokenized when absent);
4. detect every answer with distillguard's detector and the model's tokenizer: provider
   p-value and the account ranking; also detect with a wrong secret (must not fire);
5. repeat one T = 0 request: the answer must be identical;
6. print a table and exit 1 when any check fails.

Usage: python benchmarks/gpu/vllm_watermark_check.py --model DIR_OR_NAME [--scheme kgw]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

SECRET = "gpu-check-secret-0123456789abcdef"
ACCOUNTS = ["acct_alpha", "acct_beta", "acct_gamma", "acct_delta"]
PROMPTS = [
    "Explain how a refrigerator works.",
    "Write a short story about a lighthouse keeper.",
    "List five tips for a job interview and explain each.",
    "Describe the water cycle to a ten-year-old.",
    "What are the pros and cons of remote work?",
    "Summarize the causes of the French Revolution.",
    "How do vaccines train the immune system?",
    "Write a letter thanking a teacher.",
]


def serve(model: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.5",
        "--enforce-eager",
    ]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return True
        except OSError:
            time.sleep(2)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--scheme", default="kgw", choices=["kgw", "gumbel", "synthid"])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--port", type=int, default=8391)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    args = ap.parse_args()
    import openai
    from transformers import AutoTokenizer

    from distillguard.watermark import build_scheme

    failures: list[str] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    # 1. no secret: the engine must not start
    proc = serve(args.model, args.port, base, args.out / "vllm_nosecret.log")
    started = wait_ready(proc, args.port, 600)
    stop(proc)
    text = (args.out / "vllm_nosecret.log").read_text(errors="replace")
    if started or "DISTILLGUARD_WATERMARK_SECRET" not in text:
        failures.append("vLLM started without the secret, or did not name the variable")
    print(
        "no-secret start refused:",
        not started,
        "| message names the variable:",
        "DISTILLGUARD_WATERMARK_SECRET" in text,
    )
    # 2. with the secret
    env = {
        **base,
        "DISTILLGUARD_WATERMARK_SECRET": SECRET,
        "DISTILLGUARD_WATERMARK_SCHEME": args.scheme,
        "DISTILLGUARD_WATERMARK_KEY_ID": "1",
    }
    proc = serve(args.model, args.port, env, args.out / "vllm_marked.log")
    try:
        if not wait_ready(proc, args.port, 900):
            print((args.out / "vllm_marked.log").read_text(errors="replace")[-4000:])
            return 1
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="x")
        tok = AutoTokenizer.from_pretrained(args.model)
        vocab = max(len(tok), tok.vocab_size)
        scheme = build_scheme(args.scheme, secret=SECRET.encode(), key_id=1, vocab_size=vocab)
        wrong = build_scheme(args.scheme, secret=b"w" * 32, key_id=1, vocab_size=vocab)
        rows = []
        for temperature in (0.0, 0.7, 1.0):
            for i in range(args.requests):
                account = ACCOUNTS[i % len(ACCOUNTS)]
                resp = client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    temperature=temperature,
                    max_tokens=args.max_tokens,
                    extra_body={
                        "vllm_xargs": {"distillguard_account": account},
                        "return_token_ids": True,
                    },
                )
                choice = resp.choices[0]
                ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get(
                    "token_ids"
                )
                if not ids:
                    ids = tok(choice.message.content or "", add_special_tokens=False)["input_ids"]
                ids = np.asarray(ids, dtype=np.int64)
                r = scheme.detect_many([ids], accounts=ACCOUNTS)[0]
                w = wrong.detect_many([ids])[0]
                rows.append(
                    (temperature, account, len(ids), r.p_value, r.accounts[0].account, w.p_value)
                )
        again = [
            client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": PROMPTS[0]}],
                temperature=0.0,
                max_tokens=args.max_tokens,
                extra_body={"vllm_xargs": {"distillguard_account": ACCOUNTS[0]}},
            )
            .choices[0]
            .message.content
            for _ in range(2)
        ]
    finally:
        stop(proc)
    print(
        f"{'T':>4} {'account':>11} {'tokens':>6} {'p':>9} {'top account':>11} {'p wrong key':>11}"
    )
    for t, a, n, p, top, pw in rows:
        print(f"{t:>4} {a:>11} {n:>6} {p:>9.1e} {top:>11} {pw:>11.2f}")
    for t in (0.0, 0.7, 1.0):
        sel = [r for r in rows if r[0] == t]
        tpr = np.mean([r[3] < 1e-3 for r in sel])
        top1 = np.mean([r[4] == r[1] for r in sel])
        print(f"T={t}: TPR at 1e-3 {tpr:.2f}, account top-1 {top1:.2f}")
        if tpr < 0.75:
            failures.append(f"TPR {tpr:.2f} at T={t}")
    if any(r[5] < 1e-3 for r in rows):
        failures.append("the wrong key fired")
    if again[0] != again[1]:
        failures.append("T = 0 answer not reproducible")
    print("T=0 repeat identical:", again[0] == again[1])
    print("FAILED: " + "; ".join(failures) if failures else "ALL CHECKS PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
