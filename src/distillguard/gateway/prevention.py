"""The defences on the hot path: what an account is served while a graduated action is on it.

``routes_openai`` calls three functions, the same for the upstream and the local backend:

- ``prepare`` (after the enforcement verdict, before the backend runs): turns the account's
  action into a ``Plan`` on the job, refuses what the plan cannot serve (an OpenAI-shaped
  400 naming the field, logged like every refusal), rewrites the request where the defence
  works on the input (``withhold_reasoning`` mode summary: the summary instruction is added
  so that the teacher writes its own summary), hooks antidistillation into local sampling,
  and records the defence in the log row's request (``"_defence"``, next to the body);
- ``complete`` / ``stream``: run the backend and change what it answered (reasoning
  withheld or perturbed, log-probabilities capped, rounded, noised or budgeted). The route
  logs what these return, so the log holds what the client was served.

The graduated actions (``actions.py``): cap_logprobs < degrade < withhold_reasoning <
perturb_reasoning < antidistill (< throttle < block, refused by the route itself). Each
action is applied, lifted and audited through ``POST /admin/actions`` like a block; lifting
it restores normal service at the next request (nothing here outlives the action except the
day's log-probability budget count). Actions that change the answer's text also serve it
without log-probabilities: those would describe tokens that were not served, or leak the
withheld ones.

Upstream mode cannot steer the upstream's sampling: ``antidistill`` there is served as
``withhold_reasoning`` (drop), and the log row says so (``applied``). A streamed answer
whose text a defence changes is generated whole and then sent as one chunk per choice.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from distillguard.actions import (
    AntidistillParams,
    CapLogprobsParams,
    PerturbReasoningParams,
    WithholdReasoningParams,
)
from distillguard.errors import ConfigError, InputError
from distillguard.gateway.backend import Job, Outcome, Reply
from distillguard.prevent.defences import (
    LogprobControls,
    control_chat_logprobs,
    control_legacy_logprobs,
    refusal,
    with_summary_instruction,
    withhold,
)
from distillguard.prevent.perturb import PerturbConfig, account_key, perturb_steps
from distillguard.wire import openai as wire

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.gateway.runtime import GatewayState
    from distillguard.gateway.state import Verdict

log = logging.getLogger("distillguard.gateway.prevention")

_REASONING_FIELDS = ("reasoning_content", "reasoning")  # upstream reasoning models' fields
_HELDOUT_SAMPLES = 8  # teacher samples the proxy's gradient is taken on, without a file
_HELDOUT_TOKENS = 64
_DAY_S = 86_400


@dataclass(frozen=True)
class Plan:
    """What one request is served under (None fields: that defence is off)."""

    action: str
    params: dict[str, Any]
    controls: LogprobControls | None = None
    budget: int | None = None  # log-probability tokens a day (cap_logprobs)
    withhold: str | None = None  # "drop" | "summary"
    perturb: PerturbConfig | None = None
    antidistill: AntidistillParams | None = None
    applied: tuple[str, ...] = ()  # what was actually done, for the log row

    @property
    def rewrites_text(self) -> bool:
        return self.withhold is not None or self.perturb is not None


_STRIP = LogprobControls(strip=True)


def plan_for(action: str, params: dict[str, Any], *, local: bool) -> Plan | None:
    """The plan for an enforcement action (None: served unchanged). ``params`` were
    validated when the action was applied; they are parsed again here, so a row written by
    an older version still fails loudly rather than being half applied."""
    if action == "cap_logprobs":
        p = CapLogprobsParams.model_validate(params)
        controls = LogprobControls(
            top_logprobs=p.top_logprobs,
            round_decimals=p.round_decimals,
            noise=p.noise,
            n_max=p.n,
            refuse_logit_bias=p.refuse_logit_bias,
        )
        return Plan(action, params, controls=controls, budget=p.budget, applied=(action,))
    if action == "withhold_reasoning":
        w = WithholdReasoningParams.model_validate(params)
        return Plan(action, params, controls=_STRIP, withhold=w.mode, applied=(action,))
    if action == "perturb_reasoning":
        q = PerturbReasoningParams.model_validate(params)
        config = PerturbConfig(rate=q.rate, max_offset=q.max_offset)
        return Plan(action, params, controls=_STRIP, perturb=config, applied=(action,))
    if action == "antidistill":
        a = AntidistillParams.model_validate(params)
        if local:
            return Plan(action, params, controls=_STRIP, antidistill=a, applied=(action,))
        # The upstream samples; we cannot steer it. The nearest defence we can serve:
        return Plan(
            action,
            params,
            controls=_STRIP,
            withhold="drop",
            applied=("withhold_reasoning:drop (antidistill needs the local backend)",),
        )
    return None


class LogprobBudget:
    """Tokens with log-probabilities served per account and UTC day. Shared through Redis
    when the gateway has one (every replica counts against the same budget), in this
    process otherwise. Checked before serving and charged after, so concurrent requests
    can overshoot it by at most what they return together."""

    def __init__(self, redis_url: str | None, prefix: str = "distillguard:prevent:lp") -> None:
        self._local: dict[tuple[str, int], int] = {}
        self._prefix = prefix
        self._redis: Any = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(redis_url)

    def _key(self, account_id: str, day: int) -> str:
        return f"{self._prefix}:{account_id}:{day}"

    async def used(self, account_id: str, now: float) -> int:
        day = int(now // _DAY_S)
        if self._redis is None:
            return self._local.get((account_id, day), 0)
        value = await self._redis.get(self._key(account_id, day))
        return int(value or 0)

    async def charge(self, account_id: str, tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        day = int(now // _DAY_S)
        if self._redis is None:
            self._local = {k: v for k, v in self._local.items() if k[1] >= day}  # old days
            self._local[(account_id, day)] = self._local.get((account_id, day), 0) + tokens
            return
        key = self._key(account_id, day)
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.incrby(key, tokens).expire(key, 2 * _DAY_S).execute()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class Prevention:
    """Per-process state of the defences: the keys, the budget counter, antidistill hooks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The perturbation and noise keys derive from the watermark secret (stable across
        # restarts and replicas); without one, from a per-process random secret.
        configured = settings.watermark_secret
        raw = configured.get_secret_value().encode() if configured is not None else b""
        self.secret = raw or secrets.token_bytes(32)
        self.budget = LogprobBudget(settings.redis_url)
        self._hooks: dict[tuple[float, float], Any] = {}
        self._pairs: dict[float, Any] = {}
        self._lock = asyncio.Lock()

    def perturb_key(self, account_id: str) -> bytes:
        return account_key(self.secret, account_id)

    def noise_rng(self, job: Job) -> np.random.Generator:
        """Noise keyed by the account and the prompt: asking the same thing again returns
        the same noise, so averaging repeated answers does not remove it."""
        prompt = job.request.prompt_text().encode()
        digest = hmac.new(
            self.secret, b"logprob-noise:" + job.account_id.encode() + b"\0" + prompt, "sha256"
        ).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "big"))

    async def antidistill_hook(self, backend: Any, params: AntidistillParams) -> Any:
        """The hook for (lambda, epsilon), built on first use (the proxy pair once per
        epsilon: a few seconds for a small proxy, on a worker thread)."""
        key = (params.lam, params.epsilon)
        hook = self._hooks.get(key)
        if hook is not None:
            return hook
        async with self._lock:
            hook = self._hooks.get(key)
            if hook is not None:
                return hook
            from distillguard.prevent.antidistill import AntidistillConfig, AntidistillHook

            pair: Any = self._pairs.get(params.epsilon)
            if pair is None:
                heldout = await self._heldout_ids(backend)
                pair = await asyncio.to_thread(self._build_pair, backend, heldout, params.epsilon)
                self._pairs[params.epsilon] = pair
            config = AntidistillConfig(
                lam=params.lam, epsilon=params.epsilon, window=self.settings.antidistill_window
            )
            hook = self._hooks[key] = AntidistillHook(pair, config)
            return hook

    async def _heldout_ids(self, backend: Any) -> list[list[int]]:
        engine = backend.engine
        path = self.settings.antidistill_heldout_path
        if path is not None:
            return [engine.encode_text(t) for t in _read_texts(Path(path))]
        from distillguard.models.engine import GenerationParams

        prompt = engine.encode_chat([{"role": "user", "content": ""}])
        samples = await asyncio.gather(
            *(
                engine.generate(prompt, GenerationParams(max_new_tokens=_HELDOUT_TOKENS, seed=i))
                for i in range(_HELDOUT_SAMPLES)
            )
        )
        return [prompt + list(s.token_ids) for s in samples]

    def _build_pair(self, backend: Any, heldout: list[list[int]], epsilon: float) -> Any:
        from distillguard.prevent.antidistill import build_proxy_pair, truncated_proxy

        if self.settings.antidistill_proxy_dir is not None:
            from distillguard.models.llama import load_model

            proxy, _ = load_model(Path(self.settings.antidistill_proxy_dir))
        else:
            proxy = truncated_proxy(backend.engine.model, self.settings.antidistill_proxy_layers)
        pair = build_proxy_pair(proxy, heldout, epsilon)
        if pair.vocab_size > backend.engine.vocab_size:
            raise ConfigError("the antidistill proxy's vocabulary is wider than the model's")
        return pair


def _read_texts(path: Path) -> list[str]:
    """Held-out texts: JSONL objects with "text", or one text a line."""
    if not path.is_file():
        raise ConfigError(f"antidistill held-out file {path} does not exist")
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            texts.append(str(orjson.loads(line).get("text", "")))
        else:
            texts.append(line)
    return [t for t in texts if t]


def prevention_of(state: GatewayState) -> Prevention:
    if state.prevention is None:
        state.prevention = Prevention(state.settings)
    return state.prevention


# ---- the three calls of the route -----------------------------------------------------------


async def prepare(state: GatewayState, job: Job, attempt: Any, verdict: Verdict) -> None:
    """Put the account's defence on ``job`` (see the module doc); InputError (400) for a
    request the defence cannot serve."""
    action = verdict.action
    if action == "degrade":
        job.degrade = True  # served without log-probabilities, as before
        _annotate(attempt, {"action": action, "params": {}, "applied": [action]})
        return
    local = hasattr(state.backend, "engine")
    plan = plan_for(action, verdict.params, local=local)
    if plan is None:
        return
    if plan.antidistill is not None:
        plan = await _with_antidistill(state, job, plan)
    _annotate(
        attempt, {"action": action, "params": dict(verdict.params), "applied": list(plan.applied)}
    )
    if plan.controls is not None:
        refused = refusal(job.body, plan.controls, chat=job.is_chat)
        if refused is not None:
            raise InputError(refused.message, param=refused.param, code=refused.code)
        if plan.controls.strip:
            job.degrade = True
    if plan.withhold == "summary":
        _ask_for_summary(job, state.settings.summary_instruction)
    job.prevention = plan


async def _with_antidistill(state: GatewayState, job: Job, plan: Plan) -> Plan:
    """Hook antidistillation into the job's sampling. When the hook cannot be built (a
    missing held-out file, a proxy that does not fit), the request is still served defended:
    reasoning dropped, the failure logged and named in the row's ``applied``."""
    assert plan.antidistill is not None
    try:
        job.logits_hook = await prevention_of(state).antidistill_hook(
            state.backend, plan.antidistill
        )
        return plan
    except Exception as exc:
        log.exception("antidistillation unavailable; serving with the reasoning withheld")
        why = f"withhold_reasoning:drop (antidistill unavailable: {type(exc).__name__})"
        return replace(plan, antidistill=None, withhold="drop", applied=(why,))


def _annotate(attempt: Any, defence: dict[str, Any]) -> None:
    """The log row's request gets ``"_defence"`` beside the body as sent (like ``_unparsed``:
    an underscore key is the gateway's note, not the client's field)."""
    body = attempt.logged_body if isinstance(attempt.logged_body, dict) else {}
    attempt.logged_body = {**body, "_defence": defence}


def _ask_for_summary(job: Job, instruction: str) -> None:
    """Rewrite the request so the teacher writes a summary line (served instead of its
    steps). The backend re-derives the prompt from the new body."""
    body = dict(job.body)
    if job.is_chat:
        body["messages"] = with_summary_instruction(body.get("messages") or [], instruction)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            body["prompt"] = f"{prompt}\n\n{instruction}"
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            body["prompt"] = [f"{p}\n\n{instruction}" for p in prompt]
        else:
            return  # token-id prompts: nothing to append to; served as drop
    job.body = body
    job.raw = orjson.dumps(body)
    job.request = wire.parse_request(job.endpoint, body)
    job.backend_state = None


def _serve_text(text: str, plan: Plan, key: bytes) -> str:
    if plan.perturb is not None:
        text = perturb_steps(text, key, plan.perturb).text
    if plan.withhold is not None:
        text = withhold(text, "summary" if plan.withhold == "summary" else "drop")
    return text


class _Served:
    """One answer's changes: text per choice, log-probabilities under the budget."""

    def __init__(self, state: GatewayState, job: Job, plan: Plan, used_today: int) -> None:
        self.plan, self.chat = plan, job.is_chat
        prevention = prevention_of(state)
        self.key = prevention.perturb_key(job.account_id)
        self.rng = prevention.noise_rng(job) if plan.controls is not None else None
        self.left = None if plan.budget is None else max(0, plan.budget - used_today)
        self.charged = 0

    def choice(self, choice: dict[str, Any], text_field: str | None) -> None:
        """Change one (chat message / delta, or text) choice in place."""
        plan = self.plan
        holder = choice.get(text_field) if text_field in ("message", "delta") else choice
        if isinstance(holder, dict):
            if plan.withhold is not None or plan.perturb is not None:
                for name in _REASONING_FIELDS:
                    holder.pop(name, None)
            field = "content" if text_field in ("message", "delta") else "text"
            if plan.rewrites_text and isinstance(holder.get(field), str):
                holder[field] = _serve_text(holder[field], plan, self.key)
        if plan.controls is not None and self.rng is not None and "logprobs" in choice:
            control = control_chat_logprobs if self.chat else control_legacy_logprobs
            choice["logprobs"], used = control(
                choice.get("logprobs"), plan.controls, self.rng, self.left
            )
            self.charged += used
            if self.left is not None:
                self.left -= used


async def complete(state: GatewayState, job: Job, outcome: Outcome) -> Reply:
    """The backend's answer to ``job`` as the account's defence serves it."""
    plan = job.prevention
    reply = await state.backend.complete(job, outcome)
    if not isinstance(plan, Plan) or reply.status != 200:
        return reply
    served = await _served(state, job, plan)
    data = orjson.loads(reply.body)
    for choice in data.get("choices") or []:
        served.choice(choice, "message" if job.is_chat else None)
    first = next(iter(data.get("choices") or []), None)
    if first is not None:
        text = (first.get("message") or {}).get("content") if job.is_chat else first.get("text")
        outcome.text_parts[:] = [text] if text else []
    await _charge(state, job, plan, served)
    return replace(reply, body=orjson.dumps(data))


async def _served(state: GatewayState, job: Job, plan: Plan) -> _Served:
    used = 0
    if plan.budget is not None:
        used = await prevention_of(state).budget.used(job.account_id, time.time())
    return _Served(state, job, plan, used)


async def _charge(state: GatewayState, job: Job, plan: Plan, served: _Served) -> None:
    if plan.budget is not None and served.charged:
        await prevention_of(state).budget.charge(job.account_id, served.charged, time.time())


def stream(
    state: GatewayState, job: Job, outcome: Outcome
) -> AsyncGenerator[tuple[bytes, str], None]:
    """The backend's stream for ``job`` as the account's defence serves it: the backend's
    own generator when no defence changes the answer."""
    frames = state.backend.stream(job, outcome)
    plan = job.prevention
    if not isinstance(plan, Plan) or (plan.controls is None and not plan.rewrites_text):
        return frames
    if plan.rewrites_text:
        return _rewritten_stream(state, job, plan, frames)
    return _controlled_stream(state, job, plan, frames)


def _payload(frame: bytes) -> dict[str, Any] | None:
    """The JSON object of one ``data: {...}`` frame, or None (comments, [DONE], errors)."""
    if not frame.startswith(b"data:"):
        return None
    try:
        data = orjson.loads(frame[5:].strip())
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "choices" in data else None


async def _controlled_stream(
    state: GatewayState, job: Job, plan: Plan, frames: AsyncGenerator[tuple[bytes, str], None]
) -> AsyncGenerator[tuple[bytes, str], None]:
    """Log-probability controls chunk by chunk (the text is unchanged)."""
    served = await _served(state, job, plan)
    try:
        async for frame, text in frames:
            data = _payload(frame)
            if data is None:
                yield frame, text
                continue
            for choice in data["choices"]:
                served.choice(choice, "delta" if job.is_chat else None)
            yield wire.sse_frame(data), text
    finally:
        await frames.aclose()
        await _charge(state, job, plan, served)


async def _rewritten_stream(
    state: GatewayState, job: Job, plan: Plan, frames: AsyncGenerator[tuple[bytes, str], None]
) -> AsyncGenerator[tuple[bytes, str], None]:
    """The whole answer first (its reasoning can only be told apart once it is complete),
    then one chunk of served text per choice, its finish, and the usage chunk if any."""
    texts: dict[int, str] = {}
    finishes: dict[int, Any] = {}
    base: dict[str, Any] | None = None
    usage_frame: dict[str, Any] | None = None
    try:
        async for frame, _text in frames:
            data = _payload(frame)
            if data is None:
                continue
            if base is None:
                base = {k: v for k, v in data.items() if k not in ("choices", "usage")}
            if data.get("usage") and not data["choices"]:
                usage_frame = data
                continue
            for choice in data["choices"]:
                i = int(choice.get("index", 0))
                part = (
                    (choice.get("delta") or {}).get("content")
                    if job.is_chat
                    else choice.get("text")
                )
                texts[i] = texts.get(i, "") + (part or "")
                if choice.get("finish_reason") is not None:
                    finishes[i] = choice["finish_reason"]
    finally:
        await frames.aclose()
    if base is None:
        return
    served = _Served(state, job, plan, 0)
    key = served.key
    if job.is_chat:
        yield (
            wire.sse_frame(
                {
                    **base,
                    "choices": [
                        wire.chat_delta(i, {"role": "assistant", "content": ""}) for i in texts
                    ],
                }
            ),
            "",
        )
    for i, raw in sorted(texts.items()):
        text = _serve_text(raw, plan, key)
        choice = (
            wire.chat_delta(i, {"content": text})
            if job.is_chat
            else wire.text_choice(i, text, None, None)
        )
        yield wire.sse_frame({**base, "choices": [choice]}), text if i == 0 else ""
        finish = finishes.get(i, "stop")
        end = (
            wire.chat_delta(i, {}, None, finish)
            if job.is_chat
            else wire.text_choice(i, "", None, finish)
        )
        yield wire.sse_frame({**base, "choices": [end]}), ""
    if usage_frame is not None:
        yield wire.sse_frame(usage_frame), ""
