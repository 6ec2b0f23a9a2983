"""The schemes inside other engines: transformers' generate on a real model directory, and the
pure step the vLLM / SGLang plugins share (those engines cannot be installed here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillguard.errors import ConfigError, InputError
from distillguard.models.llama import load_model
from distillguard.watermark.engines.core import EngineMarker, RowRequest, force, padded_histories

SECRET = b"engine-plugin-test-secret-0123456789"
PROMPTS = [
    "Write a short story about a cat.",
    "Explain how rain forms.",
    "Give three tips for learning to cook.",
    "Describe the ocean at night.",
]
NEW = 96


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir)


def _generate(model, tok, processor=None, **kwargs):
    batch = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            logits_processor=[processor] if processor is not None else None,
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
    return [row[batch["input_ids"].shape[1] :].numpy() for row in out]


def _marker(name: str, vocab: int) -> EngineMarker:
    return EngineMarker.build(secret=SECRET, scheme=name, key_id=1, vocab_size=vocab)


@pytest.mark.parametrize("name", ["kgw", "gumbel", "synthid"])
def test_generate_with_the_processor_is_detected_and_plain_generate_is_not(
    name, model_and_tokenizer
) -> None:
    from distillguard.watermark.engines.transformers import WatermarkLogitsProcessor

    model, tok = model_and_tokenizer
    vocab = model.get_input_embeddings().weight.shape[0]
    marker = _marker(name, vocab)
    accounts = ["alice", "bob", "alice", "bob"]
    proc = WatermarkLogitsProcessor(marker, accounts=accounts, temperature=1.0, seeds=[1, 2, 3, 4])
    marked = _generate(model, tok, proc, do_sample=False)
    torch.manual_seed(1)
    plain = _generate(model, tok, do_sample=True, temperature=1.0)
    scheme = marker.scheme
    # the tiny test model is fitted to a small text (low entropy): judge each account's
    # 2 x 96 tokens together, as a detector judges an account's traffic
    alice, bob = np.concatenate(marked[0::2]), np.concatenate(marked[1::2])
    res = scheme.detect_many([alice, bob], accounts=["carol", "alice", "bob"])
    assert all(r.p_value < 1e-3 for r in res), [r.p_value for r in res]
    if name != "gumbel":  # Gumbel's account signal lives on 1/8 of the contexts: too few here
        assert [r.accounts[0].account for r in res] == ["alice", "bob"]
        assert all(r.accounts[0].p_value_corrected < 1e-2 for r in res)
    plain_res = scheme.detect_many([np.concatenate(plain[0::2]), np.concatenate(plain[1::2])])
    assert all(r.p_value > 1e-3 for r in plain_res)
    # the processor's output allows exactly one token per row, whatever generate does next
    again = WatermarkLogitsProcessor(marker, accounts=accounts, temperature=1.0, seeds=[1, 2, 3, 4])
    resampled = _generate(model, tok, again, do_sample=True, temperature=0.5, top_k=3)
    assert all(np.array_equal(a, b) for a, b in zip(marked, resampled, strict=True))


def test_temperature_zero_through_generate_is_deterministic(model_and_tokenizer) -> None:
    from distillguard.watermark.engines.transformers import WatermarkLogitsProcessor

    model, tok = model_and_tokenizer
    marker = _marker("kgw", model.get_input_embeddings().weight.shape[0])
    runs = [
        _generate(
            model,
            tok,
            WatermarkLogitsProcessor(marker, accounts=["a"] * 4, temperature=0.0),
            do_sample=False,
        )
        for _ in range(2)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_the_plugin_refuses_to_start_without_its_secret() -> None:
    with pytest.raises(ConfigError, match="DISTILLGUARD_WATERMARK_SECRET"):
        EngineMarker.from_environment({}, vocab_size=1024)
    with pytest.raises(ConfigError, match="KEY_ID"):
        EngineMarker.from_environment(
            {"DISTILLGUARD_WATERMARK_SECRET": "x" * 32, "DISTILLGUARD_WATERMARK_KEY_ID": "one"},
            vocab_size=1024,
        )
    marker = EngineMarker.from_environment(
        {"DISTILLGUARD_WATERMARK_SECRET": "x" * 32, "DISTILLGUARD_WATERMARK_SCHEME": "synthid"},
        vocab_size=1024,
    )
    assert marker.info.scheme == "synthid" and marker.info.key_id == 1
    assert "x" * 16 not in repr(marker.info)


def test_bad_rows_are_clear_errors(model_and_tokenizer) -> None:
    from distillguard.watermark.engines.transformers import WatermarkLogitsProcessor

    model, tok = model_and_tokenizer
    marker = _marker("kgw", model.get_input_embeddings().weight.shape[0])
    with pytest.raises(InputError, match="rows"):
        _generate(model, tok, WatermarkLogitsProcessor(marker, accounts=["a"]), do_sample=False)
    with pytest.raises(InputError, match="temperature"):
        RowRequest(account="a", temperature=-1.0)
    with pytest.raises(InputError, match="string"):
        RowRequest(account=7, temperature=1.0)  # type: ignore[arg-type]


def test_the_step_marks_ragged_histories_like_the_engine(sample_rows) -> None:
    """The list-history path (vLLM, SGLang): ragged rows are left padded, the chosen token is
    the only one left, and a text built step by step through it is detected."""
    marker = _marker("kgw", 512)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(512, 512, generator=g) * 2.0
    histories = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    rows = [RowRequest(account=a, temperature=0.8, seed=i) for i, a in enumerate("abc")]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    for _ in range(120):
        logits = table[[h[-1] for h in histories]]
        out = marker.apply(logits, histories, rows, gens)
        assert bool((torch.isfinite(out).sum(-1) == 1).all())
        for h, t in zip(histories, out.argmax(-1).tolist(), strict=True):
            h.append(t)
    assert padded_histories([[5], [1, 2]]).tolist() == [[0, 5], [1, 2]]
    res = marker.scheme.detect_many([np.array(h) for h in histories])
    assert all(r.p_value < 1e-4 for r in res)
    assert force(torch.zeros(2, 4), torch.tensor([3, 0])).argmax(-1).tolist() == [3, 0]
