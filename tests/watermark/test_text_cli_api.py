"""Through the real engine, tokenizer, CLI and HTTP API: marked answers test positive, real
answers negative, and every kind of bad input gets its own error without stopping the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.errors import InsufficientData, NotFound
from distillguard.watermark import build_scheme
from distillguard.watermark.detect import TextDetector, detect_text
from distillguard.watermark.keys import KeyRing

from .conftest import SECRET

runner = CliRunner()
ACCOUNTS = ["acct-a", "acct-b"]


@pytest.fixture(scope="module")
def marked(tiny_model_dir: Path) -> dict:
    """Answers of the tiny model generated through the engine with KGW key id 2, two accounts."""
    from distillguard.models.engine import GenerationEngine, GenerationParams
    from distillguard.models.llama import load_model

    model, tok = load_model(tiny_model_dir)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    scheme = build_scheme("kgw", secret=SECRET, key_id=2, vocab_size=vocab)
    engine = GenerationEngine(model, tok, sampler=scheme, num_threads=1)
    prompts = [f"Tell me about item {i}." for i in range(6)]
    ids = [engine.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    params = [
        GenerationParams(max_new_tokens=120, temperature=1.0, seed=i, tag=ACCOUNTS[i % 2])
        for i in range(6)
    ]
    done = engine.generate_batch(ids, params)
    plain = GenerationEngine(model, tok, num_threads=1).generate_batch(
        ids, [GenerationParams(max_new_tokens=120, seed=i) for i in range(6)]
    )
    return {
        "tokenizer": tok,
        "texts": [c.text for c in done],
        "prompts": prompts,
        "plain": [c.text for c in plain],
        "again": engine.generate_batch(ids[:1], params[:1]),
    }


def test_engine_answers_are_detected_and_attributed(marked) -> None:
    ring = KeyRing(SECRET, current_key_id=3)  # key 2 marked them; ids 1..3 are tried
    det = TextDetector(tokenizer=marked["tokenizer"], keyring=ring, scheme="kgw")
    res = det.detect_batch(marked["texts"], prompts=marked["prompts"], accounts=ACCOUNTS)
    ok = [(i, r) for i, r in enumerate(res) if not isinstance(r, InsufficientData)]
    assert len(ok) >= 4  # (an answer of the tiny model may stop at once)
    assert np.median([r.log10_p_value for _, r in ok]) < -3
    assert all(r.keys_tried == 3 for _, r in ok)
    strong = [(i, r) for i, r in ok if r.log10_p_value < -3]
    assert all(r.key_id == 2 for _, r in strong)
    assert sum(r.accounts[0].account == ACCOUNTS[i % 2] for i, r in strong) >= len(strong) - 1
    plain = det.detect_batch(marked["plain"])
    assert all(r.p_value > 1e-3 for r in plain if not isinstance(r, Exception))
    assert marked["again"][0].text == marked["texts"][0]  # seeded rows reproduce


def test_detect_text_api_and_bad_texts(marked) -> None:
    tok = marked["tokenizer"]
    r = detect_text(marked["texts"][0], tokenizer=tok, secret=SECRET, key_ids=[1, 2])
    assert r.scheme == "kgw" and r.keys_tried == 2 and r.num_scored > 20
    with pytest.raises(InsufficientData):
        detect_text("", tokenizer=tok, secret=SECRET)
    with pytest.raises(InsufficientData):
        detect_text("a", tokenizer=tok, secret=SECRET)
    garbage = bytes(range(256)).decode("latin-1") * 2  # another tokenizer's byte soup
    g = detect_text(garbage, tokenizer=tok, secret=SECRET, scheme="gumbel")
    assert g.p_value > 1e-3
    wrong = detect_text(
        marked["texts"][0],
        tokenizer=tok,
        secret=b"not-the-provider-secret-00000000",
        key_ids=[1, 2],
    )
    assert wrong.p_value > 1e-3


def _write_jsonl(path: Path, marked) -> None:
    lines = [
        json.dumps({"text": marked["texts"][0], "prompt": marked["prompts"][0]}),
        json.dumps({"text": ""}),
        json.dumps({"answer": "no text field"}),
        "{not json",
        json.dumps({"text": 42}),
        "",
        json.dumps({"text": marked["plain"][0]}),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_cli_detect_prints_one_line_per_input_and_counts_skipped(
    marked, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET", SECRET.decode())
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_KEY_ID", "2")
    f = tmp_path / "in.jsonl"
    _write_jsonl(f, marked)
    res = runner.invoke(
        app,
        [
            "watermark",
            "detect",
            str(f),
            "--tokenizer",
            str(tiny_model_dir),
            "--prompt-field",
            "prompt",
            "--accounts",
            ",".join(ACCOUNTS),
        ],
    )
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 4, 5, 7]  # the blank line is not an input
    assert out[0]["p_value"] < 1e-3 and out[0]["accounts"][0]["account"] == ACCOUNTS[0]
    assert [o.get("error") for o in out[1:5]] == [
        "InsufficientData",
        "InputError",
        "InputError",
        "InputError",
    ]
    assert "no field 'text'" in out[2]["message"]
    assert out[5]["p_value"] > 1e-3
    assert "4 skipped" in res.stderr
    # plain text from stdin, one text per line, scheme chosen on the command line
    res = runner.invoke(
        app,
        [
            "watermark",
            "detect",
            "-",
            "--format",
            "lines",
            "--scheme",
            "synthid",
            "--tokenizer",
            str(tiny_model_dir),
        ],
        input="hello there, this is a line of text\n\n",
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines[0]["scheme"] == "synthid" and lines[1]["error"] == "InsufficientData"


def test_cli_keys_lists_ids_never_the_secret(monkeypatch) -> None:
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET", SECRET.decode())
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_KEY_ID", "3")
    res = runner.invoke(app, ["watermark", "keys"])
    assert res.exit_code == 0, res.output
    assert SECRET.decode() not in res.output and "3" in res.output and "yes" in res.output


def test_cli_errors_missing_file_and_secret(tmp_path, tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_SECRET", SECRET.decode())
    res = runner.invoke(
        app,
        ["watermark", "detect", str(tmp_path / "nope.jsonl"), "--tokenizer", str(tiny_model_dir)],
    )
    assert isinstance(res.exception, NotFound)
    res = runner.invoke(app, ["watermark", "detect", "-", "--tokenizer", str(tmp_path)])
    assert isinstance(res.exception, NotFound)  # no tokenizer there


def test_admin_route_detects_batches_with_per_text_errors(marked, tiny_model_dir, dg_home) -> None:
    """The gateway serving the tiny model answers /admin/watermark/detect with the served
    model's tokenizer, per-text errors, 400 for request-level problems, and only to staff."""
    from distillguard.config import Settings
    from distillguard.gateway.app import create_app

    settings = Settings(
        home=dg_home,
        model_dir=tiny_model_dir,
        watermark_secret=SECRET.decode(),
        watermark_key_id=2,
        admin_token="staff-token",
        online_monitor=False,
    )
    with TestClient(create_app(settings)) as client:
        staff = {"Authorization": "Bearer staff-token"}
        url = "/admin/watermark/detect"
        texts = [marked["texts"][1], "", marked["plain"][1]]
        r = client.post(url, json={"texts": texts, "accounts": ACCOUNTS}, headers=staff)
        assert r.status_code == 200, r.text
        body = r.json()["results"]
        assert body[0]["p_value"] < 1e-3 and body[0]["accounts"][0]["account"] == ACCOUNTS[1]
        assert body[1]["error"] == "InsufficientData" and body[2]["p_value"] > 1e-3
        assert client.post(url, json={}, headers=staff).status_code == 400
        bad_key = client.post(url, json={"text": "x", "key_ids": [9]}, headers=staff)
        assert bad_key.status_code == 400 and "key id" in bad_key.json()["error"]["message"]
        bad_scheme = client.post(url, json={"text": "x", "scheme": "nope"}, headers=staff)
        assert bad_scheme.status_code == 400
        assert client.post(url, json={"text": "x"}).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert client.post(url, json={"text": "x"}, headers=wrong).status_code == 403
