"""Radioactivity: calibrated under random keys, finds a planted signal and the account, refuses
garbage (not a model, too little text), and the API mode resumes after a failing server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from distillguard.errors import InputError, InsufficientData, ModelError, UpstreamError
from distillguard.forensics.radioactivity import (
    Predictions,
    RadioactivityConfig,
    collect_predictions,
    full_distribution_z,
    open_weights_tests,
    random_keys,
    random_schemes,
    rekeyed_binomial,
    rekeyed_full_distribution,
    text_pairs,
)
from distillguard.forensics.radioactivity_accounts import (
    account_tests_distribution,
    account_tests_pairs,
)
from distillguard.forensics.suspects import prove_open_weights, prove_texts, query_suspect_api
from distillguard.watermark import build_scheme

SECRET = b"forensics-test-secret-0123456789"
SMALL = RadioactivityConfig(min_effect_size=0.5)  # tests use little text: lower the floor


def _scheme(vocab: int, **params: float):
    return build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=vocab, **params)


def _synthetic(vocab: int = 512, contexts: int = 400, seed: int = 0, scale: float = 1.5):
    rng = np.random.default_rng(seed)
    ctx = rng.choice(vocab, size=(contexts, 1), replace=False).astype(np.int64)
    q = np.exp(rng.normal(size=(contexts, vocab)) * scale)
    return ctx, q / q.sum(axis=1, keepdims=True)


def _predictions(ctx: np.ndarray, q: np.ndarray) -> Predictions:
    top = q.argmax(axis=1).astype(np.int64)
    return Predictions(ctx, q.astype(np.float32), ctx, top, len(ctx), len(ctx))


def test_pvalues_uniform_under_random_keys() -> None:
    ctx, q = _synthetic()
    scheme = _scheme(512)
    preds = _predictions(ctx, q)
    keys = random_schemes(scheme, 300, seed=3)
    z = np.array([full_distribution_z(k, preds, "stouffer") for k in keys])
    p = stats.norm.sf(z)
    assert stats.kstest(p, "uniform").pvalue > 0.001
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.2
    top1, full = open_weights_tests(
        scheme, preds, RadioactivityConfig(random_keys=100, min_effect_size=0.5)
    )
    for result in (top1, full):
        cal = result.calibration
        assert cal is not None and cal["keys"] == 100 and cal["fpr_0.001"] <= 0.03


@pytest.mark.parametrize("width", [1, 2])
def test_rekeyed_scoring_equals_scoring_under_each_random_scheme(width: int) -> None:
    """The vectorised calibration re-scores with exactly the keys random_schemes builds."""
    rng = np.random.default_rng(width)
    scheme = _scheme(256, context_width=width)
    ctx = rng.integers(0, 256, size=(60, width))
    q = np.exp(rng.normal(size=(60, 256)) * 2.0)
    preds = _predictions(ctx, q / q.sum(axis=1, keepdims=True))
    keys, schemes = random_keys(scheme, 4, seed=8), random_schemes(scheme, 4, seed=8)
    for weighting in ("stouffer", "mass", "precision"):
        fast = rekeyed_full_distribution(scheme, keys, preds, weighting, chunk=7)
        slow = [full_distribution_z(s, preds, weighting) for s in schemes]
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)
    fast_p = rekeyed_binomial(scheme, keys, preds.top1_contexts, preds.top1_tokens)
    slow_p = [open_weights_tests(s, preds, SMALL)[0].log10_p_value for s in schemes]
    np.testing.assert_allclose(fast_p, slow_p, rtol=1e-9)


def test_exact_pair_test_is_uniform_under_thousands_of_keys() -> None:
    """Deduplicated pairs of a text never marked with the key: the exact test's FPR at 1e-2
    and its KS distance over 4,000 random keys are those of uniform p-values."""
    rng = np.random.default_rng(11)
    scheme = _scheme(512, context_width=2)
    pairs = np.unique(rng.integers(0, 512, size=(3000, 3)), axis=0)
    p = 10.0 ** rekeyed_binomial(scheme, random_keys(scheme, 4000, 3), pairs[:, :2], pairs[:, 2])
    assert 0.005 < (p < 0.01).mean() < 0.016
    assert (p < 1e-3).mean() < 3e-3
    assert stats.kstest(p, "uniform").pvalue > 1e-3


def test_planted_green_bias_is_found_and_full_distribution_is_stronger() -> None:
    ctx, q = _synthetic(seed=1)
    scheme = _scheme(512)
    tilted = q * np.exp(0.3 * scheme.green_mask(ctx, 512))  # a faint learnt bias
    tilted /= tilted.sum(axis=1, keepdims=True)
    top1, full = open_weights_tests(scheme, _predictions(ctx, tilted), SMALL)
    assert full.log10_p_value < -6
    assert full.log10_p_value < top1.log10_p_value
    # the same tilt under another key is no evidence
    other = random_schemes(scheme, 1, seed=9)[0]
    _, full_other = open_weights_tests(other, _predictions(ctx, tilted), SMALL)
    assert full_other.log10_p_value > -3


def test_precision_weighting_is_calibrated_and_finds_a_faint_mark() -> None:
    """Weights that depend only on the suspect's own q keep the null N(0, 1) under random keys;
    on a mark learnt only where q spreads its mass (as a diluted sft student learns it), the
    precision weighting is stronger than equal Stouffer weights."""
    ctx, q = _synthetic(contexts=500, seed=4, scale=2.5)  # peaked and flat contexts mixed
    scheme = _scheme(512)
    preds = _predictions(ctx, q)
    keys = random_schemes(scheme, 300, seed=5)
    z = np.array([full_distribution_z(k, preds, "precision") for k in keys])
    assert stats.kstest(stats.norm.sf(z), "uniform").pvalue > 0.001
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.2
    tilted = q * np.exp(0.08 * scheme.green_mask(ctx, 512))
    tilted /= tilted.sum(axis=1, keepdims=True)
    faint = _predictions(ctx, tilted)
    z_precision = full_distribution_z(scheme, faint, "precision")
    z_stouffer = full_distribution_z(scheme, faint, "stouffer")
    assert z_precision > z_stouffer > 0
    with pytest.raises(InputError, match="precision"):
        RadioactivityConfig(weighting="precison")


def test_suspect_is_read_on_exactly_the_ids_sft_trains_on(tiny_model_dir: Path) -> None:
    """The sft dataset (prompt template + answer tokenized separately + eos, completion mask
    on the answer) and the open-weights test's reading of the same rows are the same ids, and
    the prompt part is what the student sees when it answers."""
    from distillguard.distill.data import prompt_ids
    from distillguard.distill.records import HarvestRecord
    from distillguard.distill.sft import _dataset
    from distillguard.forensics.suspects import encode_rows
    from distillguard.models.llama import load_model

    _, tok = load_model(tiny_model_dir)
    pairs = [("Name a colour.", "\n\n  Blue, mostly."), ("Say hi", " hi there")]
    rows = [
        HarvestRecord(str(i), p, a, "stop", "teacher", False, {}) for i, (p, a) in enumerate(pairs)
    ]
    trained = _dataset(rows, tok, max_length=256)
    read = encode_rows(tok, pairs)
    for example, ids, (prompt, answer) in zip(trained, read, pairs, strict=True):
        head = prompt_ids(tok, prompt)
        assert example["input_ids"] == ids
        assert ids[: len(head)] == head and ids[-1] == tok.eos_token_id
        assert example["completion_mask"] == [0] * len(head) + [1] * (len(ids) - len(head))
        assert tok.decode(ids[len(head) : -1]) == answer


def test_account_whose_answers_were_learnt_is_named() -> None:
    ctx, q = _synthetic(seed=2)
    scheme = _scheme(512, account_delta=1.0)
    green = scheme.green_mask(ctx, 512)
    source = "acct-7"
    u = scheme.context.vocab_values(scheme.account_key(source), ctx, 512)
    account_green = scheme.account_pair_scores(u.ravel()).reshape(u.shape) > 0.5
    tilted = q * np.exp(1.0 * green + 1.0 * (green & account_green))
    tilted /= tilted.sum(axis=1, keepdims=True)
    accounts = [f"acct-{i}" for i in range(10)]
    evidence = account_tests_distribution(scheme, _predictions(ctx, tilted), accounts, SMALL)
    assert evidence[0].account == source and evidence[0].p_holm < 1e-4
    assert all(e.p_holm > 1e-3 for e in evidence[1:])


def test_text_pairs_deduplicate_over_the_corpus() -> None:
    ctx, tok, total = text_pairs([[1, 2, 3, 1, 2], [1, 2, 9]], width=1, vocab=16)
    assert total == 8
    # pairs: (1,2) x3 -> once, (2,3), (3,1), (2,9)
    assert sorted(zip(ctx[:, 0].tolist(), tok.tolist(), strict=True)) == [
        (1, 2),
        (2, 3),
        (2, 9),
        (3, 1),
    ]


def test_too_little_text_says_how_much_is_needed() -> None:
    scheme = _scheme(512)
    with pytest.raises(InsufficientData, match=r"at least \d+"):
        prove_texts(
            ["a few words"],
            suspect="s",
            mode="api",
            tokenizer=_CharTok(),
            scheme=scheme,
            config=RadioactivityConfig(),
        )


def test_not_a_model_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    from distillguard.models.llama import load_model

    _, tok = load_model(tiny_model_dir)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError):
        prove_open_weights(tmp_path, [("q", "a")], tokenizer=tok, scheme=_scheme(len(tok)))


class _CharTok:
    """A byte 'tokenizer' for text-mode unit tests."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


# --------------------------------------------------------------------------- tiny models


def _watermarked_sequences(
    scheme, vocab: int, count: int, length: int, seed: int, delta: float = 4.0
) -> np.ndarray:
    """Token sequences over a 60-token "language" (fixed unigram logits) plus the KGW green
    bias of the previous token: what a student of our watermarked answers trains on."""
    base = np.full(vocab, -30.0)
    base[100:160] = np.random.default_rng(0).normal(size=60)
    rng = np.random.default_rng(seed)
    seqs = np.zeros((count, length), np.int64)
    seqs[:, 0] = rng.integers(100, 160, size=count)
    for t in range(1, length):
        logits = base + delta * scheme.green_mask(seqs[:, t - 1 : t], vocab)  # (B, V)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        seqs[:, t] = (p.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return seqs


def _train_student(tok, out: Path, seqs: np.ndarray, steps: int = 150) -> Path:
    """A fresh tiny Llama trained on the marked sequences (a from-scratch distilled student)."""
    import torch

    from distillguard.models.llama import SIZES, new_model

    torch.manual_seed(0)
    model = new_model(SIZES["tiny"], tok, seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.from_numpy(seqs)
    for step in range(steps):
        batch = data[(step * 16) % len(data) :][:16]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def radioactive_setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import torch

    from distillguard.models.llama import load_model

    torch.set_num_threads(1)
    _, tok = load_model(tiny_model_dir)
    vocab = len(tok)
    scheme = _scheme(vocab)
    seqs = _watermarked_sequences(scheme, vocab, count=640, length=32, seed=0)
    student = _train_student(tok, tmp_path_factory.mktemp("student"), seqs)
    return tok, scheme, seqs, student


def test_tiny_student_is_radioactive_and_clean_model_is_not(
    radioactive_setup, tiny_model_dir: Path
) -> None:
    from distillguard.models.llama import load_model

    tok, scheme, _, student = radioactive_setup
    reading = _watermarked_sequences(scheme, len(tok), count=64, length=64, seed=1)
    config = RadioactivityConfig(min_effect_size=0.5, random_keys=20)
    results = {}
    for name, path in (("student", student), ("clean", tiny_model_dir)):
        model, _ = load_model(path)
        preds = collect_predictions(model, list(reading), width=1, vocab=len(tok), config=config)
        results[name] = open_weights_tests(scheme, preds, config)
    top1, full = results["student"]
    assert full.log10_p_value < -10 and top1.log10_p_value < -3
    assert full.log10_p_value < top1.log10_p_value  # the full distribution carries more
    for result in results["clean"]:
        assert result.log10_p_value > -3  # never trained on our answers: not flagged
        assert result.calibration is not None


def test_open_weights_end_to_end_on_text_rows(radioactive_setup) -> None:
    tok, scheme, seqs, student = radioactive_setup
    rows = [("", tok.decode(s.tolist())) for s in seqs[:160]]
    report = prove_open_weights(
        student,
        rows,
        tokenizer=tok,
        scheme=scheme,
        served_answers=[r[1] for r in rows],
        config=SMALL,
    )
    assert report.mode == "open-weights" and report.served_contexts
    assert {t.test for t in report.tests} == {"top1-binomial", "full-distribution"}
    assert min(t.log10_p_value for t in report.tests) < -4
    data = report.to_dict()
    assert data["test"] == "radioactivity" and data["tests"][0]["num_scored"] > 0


# --------------------------------------------------------------------------- API-only mode


class _FlakyServer:
    """An OpenAI-compatible chat endpoint that answers from canned texts, rate-limits once
    and then fails for good after ``die_after`` answers (until ``revive``)."""

    def __init__(self, answers: list[str], die_after: int):
        self.answers = answers
        self.die_after = die_after
        self.calls = self.served = 0
        self.dead = False
        self.url = ""
        self._started = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._started.wait(10)

    def revive(self) -> None:
        self.dead = False
        self.die_after = 10**9

    def _run(self) -> None:
        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            self.calls += 1
            body = await request.json()
            if self.calls == 2:
                return web.json_response(
                    {"error": {"message": "slow down"}},
                    status=429,
                    headers={"retry-after-ms": "10"},
                )
            if self.dead or self.served >= self.die_after:
                self.dead = True
                return web.json_response({"error": {"message": "down"}}, status=503)
            prompt = body["messages"][-1]["content"]
            answer = self.answers[int(prompt.split()[-1]) % len(self.answers)]
            self.served += 1
            return web.json_response(
                {
                    "id": f"c{self.calls}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "suspect",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": answer},
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 50, "total_tokens": 53},
                }
            )

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/v1"
            self._started.set()
            await asyncio.Event().wait()

        asyncio.run(main())


def test_api_mode_resumes_after_failure_and_finds_the_mark(
    radioactive_setup, tmp_path: Path
) -> None:
    tok, scheme, seqs, _ = radioactive_setup
    answers = [tok.decode(s.tolist()) for s in seqs[:60]]  # the suspect parrots marked text
    server = _FlakyServer(answers, die_after=25)
    prompts = [f"question number {i}" for i in range(60)]
    cache = tmp_path / "suspect.jsonl"
    kwargs = {
        "base_url": server.url,
        "api_key": "k",
        "cache": cache,
        "model": "suspect",
        "max_retries": 1,
        "concurrency": 2,
    }
    with pytest.raises(UpstreamError, match="resume"):
        query_suspect_api(prompts, **kwargs)
    saved = cache.read_text().count("\n")
    assert 20 <= saved < 60  # what came back before the failure is kept
    server.revive()
    got, result = query_suspect_api(prompts, **kwargs)
    assert result.already_done == saved and result.complete and len(got) == 60
    report = prove_texts(
        got,
        suspect=server.url,
        mode="api",
        tokenizer=tok,
        scheme=scheme,
        accounts=["a1", "a2"],
        config=SMALL,
    )
    assert report.tests[0].test == "text-binomial" and report.tests[0].log10_p_value < -10
    assert len(report.accounts) == 2


def test_account_pairs_test_is_exact_binomial() -> None:
    scheme = _scheme(512)
    rng = np.random.default_rng(5)
    ctx = rng.integers(0, 512, size=(3000, 1))
    tok = rng.integers(0, 512, size=3000)
    evidence = account_tests_pairs(scheme, ctx, tok, ["x", "y", "z"], "text-binomial")
    assert len(evidence) == 3
    assert all(0.0 < e.p_value <= 1.0 and e.p_holm >= e.p_value for e in evidence)
