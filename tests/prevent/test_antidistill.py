"""Antidistillation sampling on a real tiny model: the proxy pair, the engine hook, and the
watermark composed on top of it."""

from __future__ import annotations

import pytest
import torch

from distillguard.errors import ConfigError
from distillguard.models.engine import GenerationEngine, GenerationParams
from distillguard.prevent.antidistill import (
    AntidistillConfig,
    AntidistillHook,
    build_proxy_pair,
    truncated_proxy,
)
from distillguard.watermark import build_scheme
from distillguard.watermark.detect import TextDetector
from distillguard.watermark.keys import KeyRing

SECRET = b"antidistill-test-secret-0123456789"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(1)
    model_engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1)
    vocab = model_engine.vocab_size
    model_engine.sampler = build_scheme("kgw", secret=SECRET, key_id=1, vocab_size=vocab)
    return model_engine


@pytest.fixture(scope="module")
def heldout(engine) -> list[list[int]]:
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees."]
    return [
        engine.encode_chat([{"role": "user", "content": t}]) + engine.encode_text(t) for t in texts
    ]


@pytest.fixture(scope="module")
def pair(engine, heldout):
    return build_proxy_pair(truncated_proxy(engine.model, 1), heldout, epsilon=0.05)


def _loss(fast, ids: list[int]) -> float:
    """Mean next-token NLL of a FastLlama over ``ids`` (one position at a time)."""
    total = 0.0
    for end in range(1, len(ids)):
        x = torch.tensor([ids[:end]])
        logits = fast.forward(x, torch.ones_like(x), torch.arange(end)[None], fast.new_cache())
        total -= float(logits.log_softmax(-1)[0, ids[end]])
    return total / (len(ids) - 1)


def test_the_pair_moves_the_proxy_up_and_down_its_loss(pair, heldout) -> None:
    # +eps along the loss gradient raises the held-out loss, -eps lowers it
    plus = sum(_loss(pair.plus, ids) for ids in heldout)
    minus = sum(_loss(pair.minus, ids) for ids in heldout)
    assert plus > minus


def test_paired_pass_equals_two_separate_passes(pair) -> None:
    ids = torch.randint(10, 250, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    both = pair.paired.forward(ids, mask, pos)  # (2, B, V)
    for i, single in enumerate((pair.plus, pair.minus)):
        ref = single.forward(ids, mask, pos, single.new_cache())
        assert torch.allclose(both[i], ref, atol=1e-4)


def test_hook_in_the_engine_steers_sampling_and_lambda_zero_does_not(engine, pair) -> None:
    prompt = engine.encode_chat([{"role": "user", "content": "Tell me about the sea."}])
    base = GenerationParams(max_new_tokens=24, seed=5, ignore_eos=True, tag="acct_x")
    plain = engine.generate_batch([prompt], base)[0]
    zero = AntidistillHook(pair, AntidistillConfig(lam=0.0, epsilon=0.05))
    assert (
        engine.generate_batch([prompt], GenerationParams(**{**base.__dict__, "logits_hook": zero}))[
            0
        ].token_ids
        == plain.token_ids
    )
    strong = AntidistillHook(pair, AntidistillConfig(lam=5.0, epsilon=0.05, window=8))
    steered = engine.generate_batch(
        [prompt, prompt], [GenerationParams(**{**base.__dict__, "logits_hook": strong}), base]
    )
    assert steered[0].token_ids != plain.token_ids  # the hooked row is steered
    assert steered[1].token_ids == plain.token_ids  # its batch neighbour is not


def test_the_watermark_composes_on_top_of_antidistillation(engine, pair) -> None:
    hook = AntidistillHook(pair, AntidistillConfig(lam=1.0, epsilon=0.05))
    prompt = engine.encode_chat([{"role": "user", "content": "Write a story."}])
    params = [
        GenerationParams(
            max_new_tokens=100, seed=i, ignore_eos=True, tag="acct_x", logits_hook=hook
        )
        for i in range(3)
    ]
    texts = [c.text for c in engine.generate_batch([prompt] * 3, params)]
    detector = TextDetector(tokenizer=engine.tokenizer, keyring=KeyRing(SECRET), scheme="kgw")
    result = detector.detect_batch([" ".join(texts)], accounts=["acct_x"])[0]
    assert not isinstance(result, Exception)
    assert result.p_value < 1e-3  # the provider's mark, after the steering


def test_bad_settings_are_config_errors(engine) -> None:
    with pytest.raises(ConfigError):
        AntidistillConfig(lam=-1.0)
    with pytest.raises(ConfigError):
        AntidistillConfig(lam=1.0, epsilon=0.0)
    with pytest.raises(ConfigError):
        truncated_proxy(engine.model, 99)
    with pytest.raises(ConfigError):
        build_proxy_pair(truncated_proxy(engine.model, 1), [[1]], 0.01)  # too short
