"""The batch request features (``engines.vectorized``) equal ``signals.request_features`` on
random requests, and the column-wise row decoding equals ``records_from_table``."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.columnar import record_row, records_from_table, traffic_schema
from distillguard.errors import InputError
from distillguard.monitor.engines.fold import (
    RESTATED,
    collect_tables,
    restated_digest,
    sorted_sketches,
)
from distillguard.monitor.engines.vectorized import batch_features, batch_languages, decode_rows
from distillguard.monitor.language import prompt_language
from distillguard.monitor.offline import collect
from distillguard.monitor.signals import SignalConfig, request_features
from distillguard.monitor.topics import WORD_TOPIC
from distillguard.traffic import TrafficRecord

CFG = SignalConfig()
# Small tables and a short recent window, so that 900 records prune the end-user table, move
# the decay anchor and fill the shape table (space-saving replacement), and count switches.
SMALL = SignalConfig(
    max_end_users=4, end_user_min=3, recent_half_life_s=5.0, switch_after=4, model_history=16
)
# Words that exercise every feature: lexicon words (topics), chain-of-thought phrasings,
# repeated frame words (shingles), separators Python splits on and Arrow does not, unicode
# that lower-cases into ASCII (the Kelvin sign), other scripts, punctuation.
_WORDS = [
    *list(WORD_TOPIC)[:60],
    "step-by-step",
    "Let's",
    "think",
    "carefully",
    "show",
    "your",
    "work",
    "explain",
    "reasoning",
    "walk me through",
    "break the problem down",
    "chain of thought",
    "ANSWER:",
    "Q:",
    "x\x1cy",
    "a\x1fb",
    "\u212a",  # Kelvin sign: lower() is ASCII "k"
    "\u0130stanbul",
    "stra\u00dfe",
    "\u043f\u0440\u0438\u0432\u0435\u0442",
    "\u65e5\u672c\u8a9e\u306e\u6587",
    "\u00a0",
    "\t",
    "\n",
    "...",
    "42",
    "(math)",
    "CODE!",
    "the",
    "and",
    "el",
    "los",
    "der",
    "die",
    "une",
    "est\u00e1",
]
_text = st.lists(st.sampled_from(_WORDS), max_size=160).map(" ".join) | st.text(max_size=80)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "developer", "assistant", 3])},
    optional={
        "content": _text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=3)
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(_message, max_size=3),
        "prompt": _text | st.lists(_text, max_size=2),
        "input": _text,
        "instructions": _text,
        "model": st.sampled_from(["m", "deep-think-1", "gpt-x", "", "Reasoner"]),
        "temperature": st.sampled_from([0, 0.0, 0.5, 0.6, 0.7, 0.99, 1, 1.5, True, None, "0"]),
        "n": st.sampled_from([1, 2, 7, 500, True, None, "3"]),
        "logprobs": st.booleans(),
        "top_logprobs": st.sampled_from([0, 5, None]),
        "stream": st.sampled_from([True, False, 1, None]),
        "reasoning_effort": st.sampled_from(["low", None]),
        "max_tokens": st.sampled_from([16, 256, 257, 4096, 1e3, True, None, "9"]),
        "max_completion_tokens": st.sampled_from([100, 2000, None]),
        "tools": st.sampled_from([[], [{"type": "function"}], None]),
        "user": st.sampled_from(["", "alice", "b" * 80, 7, None]),
        "metadata": st.sampled_from(
            [
                {},
                {"user": "bob"},
                {"user_id": "carol"},
                {"user": 3},
                {"user": "", "user_id": "d"},
                "x",
            ]
        ),
    },
)


@settings(max_examples=25, deadline=None)
@given(st.lists(_request, min_size=1, max_size=40))
def test_batch_features_equal_request_features(requests: list[dict]) -> None:
    batch = batch_features(requests, CFG)
    for i, r in enumerate(requests):
        assert batch.row(i) == request_features(r, CFG), r
    assert batch_languages(batch.text).tolist() == [prompt_language(t) for t in batch.text]


def test_long_prompts_and_templates() -> None:
    """Long texts (the two-window paths), many repeated frame words, CoT in the middle and at
    the ends, on the fast path and the reference path alike."""
    frame = "You are a helpful tutor. Answer the question below and show your work. "
    body = " ".join(list(WORD_TOPIC)[i % 200] for i in range(400))
    texts = [
        frame + body,
        body + " Let's think step by step.",
        body[:500] + " chain of thought " + body[500:],
        frame * 20,
        "\u212a" + frame + body,
        "",
        "a b",
    ]
    requests = [{"messages": [{"role": "user", "content": t}]} for t in texts]
    batch = batch_features(requests, CFG)
    for i, r in enumerate(requests):
        assert batch.row(i) == request_features(r, CFG)
    assert batch.cot[1] and zlib.crc32(b"you are a") in batch.shingles[0]


def _record(i: int, account: str, **kw: object) -> TrafficRecord:
    req = {"model": "m", "messages": [{"role": "user", "content": f"solve {i} step by step"}]}
    base: dict = dict(
        id=f"ex-{i}",
        ts=1.7e9 + 37.0 * i,
        account_id=account,
        key_id="k",
        ip=f"10.0.{i % 3}.{i % 7}",
        endpoint="/v1/chat/completions",
        request=req,
        status=200 if i % 5 else 429,
        user_agent="ua" if i % 2 else None,
        payment_fingerprint="pay",
        response_text="Step 1: the answer" if i % 3 else None,
        completion_tokens=None if i % 4 else 12,
    )
    base.update(kw)
    return TrafficRecord(**base)


def _table(records: list[TrafficRecord]) -> pa.Table:
    return pa.Table.from_pylist(
        [record_row(r, i) for i, r in enumerate(records)], schema=traffic_schema()
    )


def _random_records(seed: int, n: int) -> list[TrafficRecord]:
    """Accounts with late arrivals, bursts, failures, many models and IPs, templated and
    free prompts (enough distinct shingles to prune the table), answers in other languages."""
    rng = random.Random(seed)
    words = [*list(WORD_TOPIC)[:300], "the", "and", "is", "el", "los", "une", "der", "die"]
    frame = "You are a grader. Read the item and answer with one word. Item:"
    out = []
    for i in range(n):
        acct = f"acct-{rng.randrange(3)}"
        # later rows switch to models the accounts had not used (model_jump)
        late_models = ["m4", "m5"] if i > n // 2 else []
        body = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 40)))
        text = f"{frame} {body}" if rng.random() < 0.6 else body
        req: dict = {
            "model": rng.choice(["m1", "m2", "think-x", "m3", *late_models]),
            "messages": [{"role": "user", "content": text}],
        }
        if rng.random() < 0.3:
            req["temperature"] = rng.choice([0, 0.3, 0.7, 1.2])
        if rng.random() < 0.2:
            req["n"] = rng.randrange(1, 5)
        if rng.random() < 0.3:
            req["max_tokens"] = rng.choice([100, 500, 4000])
        if rng.random() < 0.2:
            req["stream"] = True
        if rng.random() < 0.1:
            req["tools"] = [{"type": "function"}]
        if rng.random() < 0.2:
            req["messages"].insert(0, {"role": "system", "content": "be brief"})
        # end users: a few heavy ones and many light ones (the table of 2 * 4 prunes)
        u = rng.random()
        if u < 0.3:
            req["user"] = f"heavy-{rng.randrange(3)}"
        elif u < 0.5:
            req["metadata"] = {"user": f"light-{rng.randrange(40)}"}
        out.append(
            _record(
                i,
                acct,
                ts=1.7e9 + 3 * i + rng.choice([0.0, 0.5, -40.0, 7200.0 * rng.random()]),
                request=req,
                ip=f"10.{rng.randrange(3)}.{rng.randrange(12)}.1",
                user_agent=rng.choice([None, "", "ua-1", "ua-2", *[f"u{k}" for k in range(10)]]),
                payment_fingerprint=rng.choice([None, "p1", "p2"]),
                status=rng.choice([200, 200, 200, 500]),
                response_text=rng.choice([None, "", "the answer is yes and that is all", body]),
                completion_tokens=rng.choice([None, 5]),
            )
        )
    return out


def _state(sketches: dict) -> dict:
    return {
        a: (
            sk.signals(),
            sk.frequent_shingles(),
            sk.bottom_k(),
            sk.buckets,
            sk.prefixes,
            sk.user_agents,
            sk.payments,
            sk.reservoir,
            sk.early_models,
            sk.models,
            sk.end_users,
            sk.early_shapes,
            sk.recent_shapes,
            sk.recent_topics,
            sk._recent_anchor,
        )
        for a, sk in sketches.items()
    }


@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("fast", [True, False])
def test_decode_rows_and_fold_equal_the_reference(fast: bool, cfg: SignalConfig) -> None:
    records = _random_records(3, 900)
    records.append(_record(5000, "acct-0", choices=[{"index": 0, "text": "x"}]))  # slow path
    table = _table(records)
    rows = decode_rows(table, "here")
    ref = list(records_from_table(table, "here"))
    assert rows.request == [r.request for r in ref]
    assert rows.ts == [r.ts for r in ref] and rows.status == [r.status for r in ref]
    want = _state(collect(ref, cfg))
    assert any(sk[0].out_of_order for sk in want.values())
    for sk in want.values():  # every new part of the state is exercised
        assert sk[0].shape_drift > 0 and len(sk[0].end_users) > 0
        assert any(before >= cfg.switch_after for _, _, before in sk[9].values())
    # in arrival order (the streaming engine) and sorted by account (DuckDB, Spark)
    got = collect_tables([(table.slice(0, 500), "a"), (table.slice(500), "b")], cfg, fast)
    assert _state(got) == want
    ordered = table.sort_by([("account_id", "ascending"), ("seq", "ascending")])
    batches = ordered.to_batches(max_chunksize=170)  # accounts span batches
    assert _state(dict(sorted_sketches(batches, cfg, "sorted", fast))) == want


def test_the_fast_fold_restates_this_checkout() -> None:
    """``engines.fold`` restates ``AccountSketch``'s update; when that code changes, the
    engines fall back to the per-row path and this test says what to re-check."""
    assert restated_digest() == RESTATED, (
        "monitor/signals.py or topics.py changed the sketch update: bring "
        "engines/fold.observe_segment up to date, run test_vectorized and test_engines, "
        f"then set fold.RESTATED = {restated_digest()!r}"
    )


def test_a_bad_row_names_the_exchange() -> None:
    table = _table([_record(i, "acct") for i in range(5)])
    bad = table.set_column(
        table.schema.get_field_index("request"),
        "request",
        pa.array([orjson.dumps({"m": 1}).decode()] * 4 + ["[1, 2]"]),
    )
    with pytest.raises(InputError, match="here: exchange 'ex-4'"):
        decode_rows(bad, "here")
    empty_id = table.set_column(0, "id", pa.array(["ex-0", "", "ex-2", "ex-3", "ex-4"]))
    with pytest.raises(InputError, match="here: exchange ''"):
        decode_rows(empty_id, "here")


def test_stream_engine_on_json_lines_equals_score_traffic(tmp_path: Path) -> None:
    from distillguard.monitor.engines.common import EngineOptions
    from distillguard.monitor.engines.stream import score_jsonl
    from distillguard.monitor.links import LinkConfig
    from distillguard.monitor.offline import score_traffic
    from distillguard.monitor.score import ScoreModel
    from distillguard.monitor.trust import TrustPolicy

    log = tmp_path / "t.jsonl"
    lines = [orjson.dumps(r.to_dict()) for r in _random_records(5, 600)]
    lines.insert(7, b'{"id": "broken", "ts": "x"}')
    log.write_bytes(b"\n".join(lines) + b"\n")
    model = ScoreModel.load()
    opts = EngineOptions(model, CFG, LinkConfig(), TrustPolicy(), None, None)
    want = score_traffic(log, None, model=model, workers=1)
    for workers in (1, 2):
        got = score_jsonl(log, opts, workers)
        assert (got.verdicts, got.clusters, got.exchanges) == (
            want.verdicts,
            want.clusters,
            want.exchanges,
        )
        assert got.read is not None and got.read.skipped == 1 == want.read.skipped
