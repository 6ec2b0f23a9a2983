"""The world's moving parts: accounts as actors, the calls they make, and the gateway they meet.

An ``Actor`` is one account: what the provider knows about it (creation time, organisation,
verification tier, declared use), how its requests leave its network (``Egress``), which
clients it runs (user agents), how it pays, and a ``program``: a generator of ``Call``s in time
order that a persona writes. ``exchanges`` plays a program against a model of the provider's
gateway: a per-account requests-per-minute limit that answers 429, clients that retry 429s and
5xx with the SDK's exponential backoff, occasional upstream failures, latency that grows with
the answer, token counts. The result is spec section 1 records, one account's in time order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from random import Random
from typing import Any

from distillguard.sim.orgs.identity import AddressBook, Egress
from distillguard.sim.orgs.sources import Sources
from distillguard.traffic import prompt_text

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

# Requests per minute a key may send, by verification tier (what providers publish as tiers).
RPM_BY_TIER = {"none": 20, "email": 60, "org": 500, "enterprise": 3000}
# A program may send a call up to this many seconds before one it already sent (a burst of
# paraphrases, an embedding lookup before its chat): the gateway model holds calls this long
# so that every account's records still come out in time order.
REORDER_S = 600.0
# Share of requests any client gets wrong (bad parameter, context too long): a 400.
CLIENT_ERROR_RATE = 0.001
VERIFICATION = ("none", "email", "org", "enterprise")


@dataclass(frozen=True)
class Env:
    """The simulated period and the shared facts every program may look at."""

    start: float
    end: float
    sources: Sources
    new_model_ts: float  # when the newest model (atlas-2) becomes available

    def newest(self, ts: float) -> str:
        return "atlas-2" if ts >= self.new_model_ts else "atlas-1"


@dataclass(slots=True)
class Call:
    """One request a program sends, with the answer the model would give when it succeeds."""

    ts: float
    endpoint: str
    request: dict[str, Any]
    text: str | None  # first choice's text (None for embeddings)
    completion_tokens: int
    choices: list[dict[str, Any]] | None = None  # n > 1 or tool calls
    response: dict[str, Any] | None = None  # non-chat bodies (embeddings)
    invalid: str | None = None  # a client error the gateway rejects with 400 (why, for us)


Program = Callable[[Random, Env], Iterator[Call]]


@dataclass
class Actor:
    """One account of the world (mutable only while the world is being built)."""

    account_id: str
    org_id: str | None
    created_ts: float
    verification: str
    declared_use: str | None
    persona: str
    label: str  # "honest" | "campaign"
    campaign_id: str | None
    keys: tuple[str, ...]
    egress: Egress
    user_agents: tuple[str, ...]
    payment: str | None
    program: Program = field(repr=False)
    # (when, user agent): a deploy upgrades the client; before it ``user_agents`` are used
    ua_upgrade: tuple[float, str] | None = None
    # "spread": several services share the keys at random; "rotate": one key after another
    # over the period (a harvester cycling keys)
    key_mode: str = "spread"
    retries: int = 2  # the official SDKs retry twice by default

    def __post_init__(self) -> None:
        if self.verification not in VERIFICATION:
            raise ValueError(f"verification must be one of {VERIFICATION}")
        if self.label not in ("honest", "campaign"):
            raise ValueError("label must be honest or campaign")
        if (self.label == "campaign") != (self.campaign_id is not None):
            raise ValueError("a campaign account needs a campaign_id, an honest one none")
        if not self.keys or not self.user_agents:
            raise ValueError("an account needs at least one key and one user agent")
        if self.key_mode not in ("spread", "rotate"):
            raise ValueError("key_mode must be spread or rotate")

    def account_row(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "created_ts": round(self.created_ts, 3),
            "org_id": self.org_id,
            "verification": self.verification,
            "declared_use": self.declared_use,
        }

    def label_row(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "label": self.label,
            "campaign_id": self.campaign_id,
            "persona": self.persona,
        }


def tokens_of(text: str) -> int:
    """Rough BPE count: about four bytes of UTF-8 a token (non-Latin scripts cost more)."""
    return max(1, len(text.encode()) // 4)


def chat_request(model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"model": model, "messages": messages}
    req.update({k: v for k, v in params.items() if v is not None})
    return req


def user_msg(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def system_msg(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def choice_list(texts: list[str], finish: str = "stop") -> list[dict[str, Any]]:
    """Spec section 1 ``choices`` for ``n`` answers."""
    return [
        {"index": i, "text": t, "finish_reason": finish, "tool_calls": None}
        for i, t in enumerate(texts)
    ]


def reply(ts: float, request: dict[str, Any], text: str, **kw: Any) -> Call:
    """A chat call whose answer is ``text`` (completion tokens counted from it)."""
    return Call(ts, CHAT, request, text, tokens_of(text), **kw)


def exchanges(actor: Actor, env: Env, rng: Random) -> Iterator[dict[str, Any]]:
    """Play ``actor``'s program against the gateway; yields its records in time order.

    Calls and retries wait on a small per-account heap for ``REORDER_S`` (a few entries for
    most accounts, a few hundred for the fastest), so memory stays constant per account.
    """
    book = AddressBook(actor.egress)
    rpm = RPM_BY_TIER[actor.verification]
    window: deque[float] = deque()
    pending: list[tuple[float, int, Call, int]] = []
    seq = 0
    uas = actor.user_agents
    ua_fixed = uas[0] if len(uas) == 1 else None
    upgrade_ts, upgraded_ua = actor.ua_upgrade or (env.end, "")
    keys = actor.keys
    span = env.end - env.start

    def play(ts: float, call: Call, attempt: int) -> dict[str, Any]:
        nonlocal seq
        while window and window[0] <= ts - 60.0:
            window.popleft()
        status = 200
        if len(window) >= rpm:
            status = 429
        else:
            window.append(ts)
            if call.invalid is not None or rng.random() < CLIENT_ERROR_RATE:
                status = 400
            elif rng.random() < 0.0015:
                status = rng.choice((500, 502, 503))
        if status in (429, 500, 502, 503) and attempt < actor.retries:
            # openai-python: 0.5 s doubling to 8 s, jitter; a 429 also honours Retry-After.
            back = min(8.0, 0.5 * 2**attempt) * rng.uniform(0.75, 1.0)
            if status == 429:
                back += rng.uniform(1.0, 20.0)
            seq += 1
            heapq.heappush(pending, (ts + back, seq, call, attempt + 1))
        ua = upgraded_ua if ts >= upgrade_ts else ua_fixed or rng.choice(uas)
        if len(keys) == 1:
            key = keys[0]
        elif actor.key_mode == "rotate":
            key = keys[min(len(keys) - 1, int((ts - env.start) / span * len(keys)))]
        else:  # the first key (production) carries most of the traffic
            key = keys[0] if rng.random() < 0.7 else rng.choice(keys)
        req = call.request
        ok = status == 200
        ptok: int | None
        ctok: int | None
        if ok:
            ptok = tokens_of(prompt_text(req) or str(req.get("input", ""))) + 4 * len(
                req.get("messages") or ()
            )
            ctok = call.completion_tokens
            stream_slow = 1.15 if req.get("stream") else 1.0
            latency = (
                rng.uniform(180, 650)
                + call.completion_tokens * rng.uniform(11, 24) * stream_slow
                + ptok * 0.02
            )
        else:
            ptok = ctok = None
            latency = rng.uniform(4, 40)
        prefix = {CHAT: "chatcmpl-", COMPLETIONS: "cmpl-", EMBEDDINGS: "emb-"}[call.endpoint]
        rec: dict[str, Any] = {
            "id": f"{prefix if ok else 'req_'}{rng.getrandbits(96):024x}",
            "ts": round(ts, 3),
            "account_id": actor.account_id,
            "key_id": key,
            "ip": book.address(rng, ts),
            "user_agent": ua,
            "payment_fingerprint": actor.payment,
            "endpoint": call.endpoint,
            "request": req,
            "response_text": call.text if ok else None,
            "prompt_tokens": ptok,
            "completion_tokens": ctok,
            "status": status,
            "latency_ms": round(latency, 1),
        }
        if ok and call.choices is not None:
            rec["choices"] = call.choices
        if ok and call.response is not None:
            rec["response"] = call.response
        return rec

    latest = env.start
    for call in actor.program(rng, env):
        if call.ts >= env.end:
            break
        if call.ts < actor.created_ts:
            continue  # an account made during the period sends nothing before it exists
        if call.ts < latest - REORDER_S:
            raise RuntimeError(
                f"the {actor.persona} program went back in time by "
                f"{latest - call.ts:.0f} s (more than {REORDER_S:.0f} s)"
            )
        latest = max(latest, call.ts)
        seq += 1
        heapq.heappush(pending, (call.ts, seq, call, 0))
        while pending and pending[0][0] <= call.ts - REORDER_S:
            ts, _, c, attempt = heapq.heappop(pending)
            yield play(ts, c, attempt)
    while pending:
        ts, _, c, attempt = heapq.heappop(pending)
        if ts < env.end:
            yield play(ts, c, attempt)
