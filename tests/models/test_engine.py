"""GenerationEngine: determinism, batching invariance, stops, limits, logprobs, concurrency,
cancellation, errors. All on the real tiny model; no timing assertions."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distillguard.errors import ContextTooLong, InputError, ModelError
from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.models.sampling import SampleOutput, sample_plain

QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Hi",
    "Explain, step by step, how a bicycle works and why it stays upright.",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> GenerationEngine:
    return GenerationEngine.from_dir(tiny_model_dir, num_threads=1, max_batch_size=8)


@pytest.fixture(scope="module")
def prompts(engine: GenerationEngine) -> list[list[int]]:
    return [engine.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def sampled(**kw: object) -> GenerationParams:
    return GenerationParams(**{"max_new_tokens": 24, "temperature": 1.0, **kw})


def test_same_seed_same_output_different_seed_differs(engine, prompts) -> None:
    a = engine.generate_batch(prompts[:1], sampled(seed=11))[0]
    b = engine.generate_batch(prompts[:1], sampled(seed=11))[0]
    c = engine.generate_batch(prompts[:1], sampled(seed=12))[0]
    assert a.token_ids == b.token_ids and a.text == b.text
    assert c.token_ids != a.token_ids


@pytest.mark.parametrize("max_batch_size", [8, 3])
def test_batching_does_not_change_results(engine, prompts, max_batch_size: int) -> None:
    """Greedy and seeded outputs of a left-padded batch equal each prompt generated alone; with
    max_batch_size 3 the fourth prompt joins the running batch when the short first row ends."""
    for base in (GenerationParams(max_new_tokens=24, temperature=0.0), sampled(seed=3, top_p=0.9)):
        params = [replace(base, max_new_tokens=n, ignore_eos=True) for n in (6, 24, 24, 24)]
        alone = [engine.generate_batch([p], prm)[0] for p, prm in zip(prompts, params, strict=True)]
        engine.max_batch_size = max_batch_size
        before = engine.stats.prefills
        try:
            together = engine.generate_batch(prompts, params)
        finally:
            engine.max_batch_size = 8
        assert engine.stats.prefills - before == (2 if max_batch_size == 3 else 1)
        assert [c.token_ids for c in together] == [c.token_ids for c in alone]
        assert [c.text for c in together] == [c.text for c in alone]


def test_max_tokens_and_usage(engine, prompts) -> None:
    greedy = engine.generate_batch(prompts, GenerationParams(max_new_tokens=7, temperature=0))
    for prompt, c in zip(prompts, greedy, strict=True):
        assert c.prompt_tokens == len(prompt)
        assert c.completion_tokens == len(c.token_ids) <= 7
        if c.finish_reason == "length":
            assert c.completion_tokens == 7
    for c in engine.generate_batch(prompts * 2, sampled(max_new_tokens=40, seed=1)):
        assert c.completion_tokens <= 40
        assert c.finish_reason in ("stop", "length")
        assert engine.tokenizer.eos_token_id not in c.token_ids


def test_stop_string_cuts_text_before_it(engine, prompts) -> None:
    full = engine.generate_batch(prompts[1:2], sampled(max_new_tokens=40, seed=5))[0]
    assert len(full.text) > 12
    stop = full.text[8:11]
    cut = engine.generate_batch(prompts[1:2], sampled(max_new_tokens=40, seed=5, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text


def test_stream_text_equals_completion_text_with_held_back_stops(engine, prompts) -> None:
    full = engine.generate_batch(prompts[:1], sampled(max_new_tokens=30, seed=9))[0]
    stop = full.text[5:9] + "\u2603"  # a prefix appears, the stop never completes
    params = sampled(max_new_tokens=30, seed=9, stop=(stop,))

    async def collect() -> list:
        return [e async for e in engine.stream(prompts[0], params)]

    events = asyncio.run(collect())
    assert "".join(e.text for e in events) == full.text
    assert events[-1].finish_reason == full.finish_reason
    assert all(e.finish_reason is None for e in events[:-1])


def test_logprobs_are_a_distribution_and_match_the_model(engine, prompts) -> None:
    params = sampled(max_new_tokens=12, seed=4, logprobs=True, top_logprobs=5)
    c = engine.generate_batch(prompts[:1], params)[0]
    assert len(c.token_logprobs) == len(c.top_logprobs) == c.completion_tokens
    for lp, top in zip(c.token_logprobs, c.top_logprobs, strict=True):
        values = [v for _, v in top]
        assert len(top) == 5 and values == sorted(values, reverse=True)
        assert sum(torch.tensor(values).exp()) <= 1.0 + 1e-5
        assert lp <= values[0] + 1e-6 and lp <= 0.0
    # The chosen token's log-prob equals an independent full forward pass (temperature 1).
    ids = torch.tensor([prompts[0] + list(c.token_ids)])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].log_softmax(-1)  # (T, V)
    start = len(prompts[0]) - 1
    expected = [float(logits[start + i, t]) for i, t in enumerate(c.token_ids)]
    assert c.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_sample_plain_top_p_and_greedy() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0], [0.0, 0.0, 0.0, 5.0]])  # (B=2, V=4)
    greedy = sample_plain(logits, temperature=0.0, top_p=1.0, generators=[None, None])
    assert greedy.tokens.tolist() == [0, 3]
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample_plain(logits, temperature=1.0, top_p=0.5, generators=gens)
    assert out.tokens.tolist() == [0, 3]  # nucleus of 0.5 holds only the top token
    assert torch.isinf(out.logprobs[0, 1:]).all() and out.logprobs[0, 0] == 0.0


def test_concurrent_requests_are_batched_together(tiny_model_dir: Path, prompts) -> None:
    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, batch_wait_ms=20.0)
    params = sampled(max_new_tokens=16, seed=2)

    async def run() -> list:
        return await asyncio.gather(*(engine.generate(p, params) for p in prompts))

    try:
        results = asyncio.run(run())
    finally:
        engine.stop()
    assert engine.stats.max_rows == len(prompts)  # all four decoded in one step at least once
    assert engine.stats.requests == len(prompts)
    expected = engine.generate_batch(prompts, params)
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]


def test_closing_the_stream_cancels_the_row(tiny_model_dir: Path, prompts) -> None:
    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1)

    async def run() -> int:
        stream = engine.stream(prompts[0], GenerationParams(max_new_tokens=200, temperature=0))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        return seen

    try:
        assert asyncio.run(run()) == 3
        deadline = time.monotonic() + 30
        while engine.load != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.load == (0, 0)
        assert engine.stats.tokens_generated < 200
    finally:
        engine.stop()


def test_context_too_long_and_bad_requests(engine, prompts) -> None:
    long_prompt = prompts[0] * (engine.context_length // len(prompts[0]))
    with pytest.raises(ContextTooLong, match="maximum context length"):
        engine.generate_batch([long_prompt], GenerationParams(max_new_tokens=64))

    async def stream_long() -> None:
        async for _ in engine.stream(long_prompt, GenerationParams(max_new_tokens=64)):
            pass

    with pytest.raises(ContextTooLong):
        asyncio.run(stream_long())
    with pytest.raises(InputError, match="empty"):
        engine.generate_batch([[]], GenerationParams(max_new_tokens=4))
    with pytest.raises(InputError, match="vocabulary"):
        engine.generate_batch([[10**6]], GenerationParams(max_new_tokens=4))
    for bad in (
        {"max_new_tokens": 0},
        {"max_new_tokens": 4, "temperature": -1},
        {"max_new_tokens": 4, "top_p": 0},
        {"max_new_tokens": 4, "stop": ("",)},
        {"max_new_tokens": 4, "top_logprobs": 21},
    ):
        with pytest.raises(InputError):
            GenerationParams(**bad)


class _RecordingSampler:
    """A TokenSampler that forces one token and records what the engine hands it."""

    def __init__(self, token: int):
        self.token, self.calls = token, []

    def sample(self, logits, input_ids, *, temperature, top_p, generators, tags) -> SampleOutput:
        self.calls.append((logits.shape, input_ids.clone(), tuple(tags)))
        out = sample_plain(logits, temperature=temperature, top_p=top_p, generators=generators)
        return SampleOutput(tokens=torch.full_like(out.tokens, self.token), logprobs=out.logprobs)


def test_sampler_hook_gets_context_and_tags(tiny_model_dir: Path, prompts) -> None:
    token = 200
    sampler = _RecordingSampler(token)
    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, sampler=sampler)
    params = [GenerationParams(max_new_tokens=3, tag=f"acct-{i}") for i in range(2)]
    out = engine.generate_batch(prompts[:2], params)
    assert [c.token_ids for c in out] == [(token,) * 3] * 2
    shape, ids, tags = sampler.calls[0]
    assert shape == (2, engine.vocab_size) and tags == ("acct-0", "acct-1")
    assert ids[0, -len(prompts[0]) :].tolist() == prompts[0]  # left padded context
    assert ids[1, -len(prompts[1]) :].tolist() == prompts[1]
    assert sampler.calls[-1][1][0, -2:].tolist() == [token, token]


def test_sampler_errors_reach_the_caller(tiny_model_dir: Path, prompts) -> None:
    class Broken:
        def sample(self, *a: object, **kw: object) -> SampleOutput:
            raise RuntimeError("boom")

    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, sampler=Broken())

    async def run() -> None:
        await asyncio.gather(
            *(engine.generate(p, GenerationParams(max_new_tokens=4)) for p in prompts[:2])
        )

    try:
        with pytest.raises(ModelError, match="boom"):
            asyncio.run(run())
    finally:
        engine.stop()


def test_fast_llama_path_matches_hf_forward(engine, tiny_model_dir: Path, prompts) -> None:
    """The lean Llama forward gives HF's tokens and log-probs, rows joining mid-batch included."""
    hf = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, fast=False, max_batch_size=3)
    assert engine.uses_fast_path and not hf.uses_fast_path
    params = sampled(max_new_tokens=20, seed=8, logprobs=True)
    engine.max_batch_size = 3
    try:
        fast_out = engine.generate_batch(prompts, params)
    finally:
        engine.max_batch_size = 8
    hf_out = hf.generate_batch(prompts, params)
    assert [c.token_ids for c in fast_out] == [c.token_ids for c in hf_out]
    for f, h in zip(fast_out, hf_out, strict=True):
        assert f.token_logprobs == pytest.approx(h.token_logprobs, abs=1e-4)


class _GateSampler:
    """Plain sampling that holds the decode thread at its third step until released, so a
    test can submit a request while another is certainly still running."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.rows: list[int] = []

    def sample(self, logits, input_ids, *, temperature, top_p, generators, tags) -> SampleOutput:
        self.rows.append(logits.shape[0])
        if len(self.rows) == 3:
            self.release.wait(timeout=20)
        return sample_plain(logits, temperature=temperature, top_p=top_p, generators=generators)


def test_request_joins_a_running_batch(tiny_model_dir: Path, prompts) -> None:
    sampler = _GateSampler()
    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, sampler=sampler)
    long = GenerationParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    short = sampled(max_new_tokens=10, seed=4)

    async def run() -> tuple[list, object]:
        first = engine.stream(prompts[0], long)
        events = [await first.__anext__()]
        joiner = asyncio.create_task(engine.generate(prompts[1], short))
        while engine.load[1] == 0 and engine.stats.requests < 2:  # queued or admitted
            await asyncio.sleep(0.001)
        sampler.release.set()
        events += [e async for e in first]
        return events, await joiner

    try:
        events, joined = asyncio.run(run())
    finally:
        engine.stop()
    assert engine.stats.prefills == 2  # the second request was prefilled on its own ...
    assert engine.stats.rows_per_step[2] > 0  # ... and then decoded beside the first
    assert len(events) == 30
    alone = engine.generate_batch(prompts[:2], [long, short])
    assert tuple(e.token_id for e in events) == alone[0].token_ids
    assert joined.token_ids == alone[1].token_ids
