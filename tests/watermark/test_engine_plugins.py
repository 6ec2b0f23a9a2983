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
    name, model_and_tokenizer, shared_data
) -> None:
    # shared_data: the strength asserted below needs a model trained on real answers; the
    # built-in fallback text leaves too little entropy to name an account at 1e-2.
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


# ---- vLLM and SGLang: their bookkeeping, vLLM- and SGLang-free (the engines need a GPU) ----


def _engine_env(**extra: str) -> dict[str, str]:
    return {"DISTILLGUARD_WATERMARK_SECRET": SECRET.decode(), **extra}


def test_vllm_request_table_follows_batch_updates_and_marks_each_request() -> None:
    from types import SimpleNamespace

    from distillguard.watermark.engines.vllm import RequestTable, row_request

    def params(account, temperature=0.9, seed=None):
        extra = {"distillguard_account": account} if account is not None else None
        return SimpleNamespace(temperature=temperature, top_p=1.0, seed=seed, extra_args=extra)

    marker = EngineMarker.from_environment(_engine_env(), vocab_size=512)
    table = RequestTable(marker)
    outputs = {name: [] for name in ("alice", "bob", "anon")}
    prompts = {"alice": [5, 6, 7], "bob": [8, 9], "anon": [10, 11, 12, 13]}
    table.update(
        removed=[],
        added=[
            (0, params("alice", seed=1), prompts["alice"], outputs["alice"]),
            (1, params("bob"), prompts["bob"], outputs["bob"]),
            (2, params(None, temperature=0.0), prompts["anon"], outputs["anon"]),
        ],
        moved=[],
    )
    swap = SimpleNamespace(name="SWAP")
    table.update(removed=[], added=[], moved=[(0, 2, swap)])  # vLLM condenses / reorders
    order = {0: "anon", 1: "bob", 2: "alice"}
    assert all(table.rows[i].output is outputs[name] for i, name in order.items())
    g = torch.Generator().manual_seed(0)
    table_logits = torch.randn(512, 512, generator=g) * 2.0
    for _ in range(150):
        last = [(prompts[order[i]] + outputs[order[i]])[-1] for i in range(3)]
        out = table.apply(table_logits[last].clone())
        assert bool((torch.isfinite(out).sum(-1) == 1).all())
        for i, t in enumerate(out.argmax(-1).tolist()):
            outputs[order[i]].append(t)  # vLLM appends to the same list it handed over
    res = marker.scheme.detect_many(
        [np.array(outputs[n]) for n in ("alice", "bob", "anon")], accounts=["alice", "bob"]
    )
    assert all(r.p_value < 1e-4 for r in res)
    assert [r.accounts[0].account for r in res[:2]] == ["alice", "bob"]
    table.update(removed=[0, 1, 2], added=[], moved=[])
    assert table.rows == {}
    assert row_request(params("a", temperature=1e-6)).temperature == 0.0  # vLLM's greedy
    with pytest.raises(InputError, match="string"):
        row_request(
            SimpleNamespace(
                temperature=1.0, top_p=1.0, seed=None, extra_args={"distillguard_account": 3}
            )
        )


def test_vllm_class_needs_vllm_and_names_it() -> None:
    import importlib.util

    import distillguard.watermark.engines.vllm as plugin

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the GPU check covers the class")
    with pytest.raises(ImportError, match="vllm"):
        plugin.DistillGuardLogitsProcessor  # noqa: B018  (the entry point's attribute)


def test_sglang_reference_unpickles_to_the_named_class_and_marking_reads_req() -> None:
    import json
    import pickle
    from types import SimpleNamespace

    from distillguard.watermark.engines import sglang

    ref = json.loads(
        sglang.processor_reference("distillguard.watermark.engines.core", "EngineMarker")
    )
    assert pickle.loads(bytes.fromhex(ref["callable"])) is EngineMarker
    fields = sglang.request_fields("alice")
    assert fields["custom_params"] == {"distillguard_account": "alice"}
    marking = sglang.SGLangMarking()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISTILLGUARD_WATERMARK_SECRET", raising=False)
        with pytest.raises(ConfigError, match="DISTILLGUARD_WATERMARK_SECRET"):
            marking(
                torch.zeros(1, 512), [{"__req__": SimpleNamespace(), "distillguard_account": "a"}]
            )
        mp.setenv("DISTILLGUARD_WATERMARK_SECRET", SECRET.decode())
        sampling = SimpleNamespace(temperature=1.0, top_p=1.0, top_k=-1)
        reqs = [
            SimpleNamespace(
                rid=f"r{i}", origin_input_ids=[i + 1, 2], output_ids=[], sampling_params=sampling
            )
            for i in range(2)
        ]
        g = torch.Generator().manual_seed(0)
        table = torch.randn(512, 512, generator=g) * 2.0
        for _ in range(150):
            logits = table[[(r.origin_input_ids + r.output_ids)[-1] for r in reqs]].clone()
            params = [{"__req__": r, "distillguard_account": "alice"} for r in reqs]
            out = marking(logits, params)
            for r, t in zip(reqs, out.argmax(-1).tolist(), strict=True):
                r.output_ids.append(t)
    res = marking.marker.scheme.detect_many([np.array(r.output_ids) for r in reqs])
    assert all(r.p_value < 1e-4 for r in res)
    # SGLang turns a T = 0 request into top_k = 1 at temperature 1: the T = 0 rule applies
    # (keyed draws: the same history gives the same token however often it is asked)
    greedy = SimpleNamespace(temperature=1.0, top_p=1.0, top_k=1)
    req = SimpleNamespace(
        rid="g", origin_input_ids=[1, 2, 3], output_ids=[], sampling_params=greedy
    )
    logits = torch.randn(1, 512, generator=torch.Generator().manual_seed(5)) * 2.0
    picks = {
        int(marking(logits.clone(), [{"__req__": req, "distillguard_account": "a"}]).argmax())
        for _ in range(5)
    }
    assert len(picks) == 1
