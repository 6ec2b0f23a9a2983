"""Live mode: the simulated population drives a real gateway through the official ``openai`` SDK.

With an admin token every simulated account becomes a real account (with its payment
fingerprint) and gets its own API key through the admin API, so the gateway's log, its online
monitor and ``monitor score --db`` see the same accounts the labels name. Without one, the
given API keys are shared out round-robin and the labels name the key's index (the gateway
alone knows the account behind a key).

Requests go out in the population's (simulated) time order, as fast as ``concurrency`` allows;
each simulated account keeps its user agent and its own IP addresses, which reach the gateway
as ``X-Forwarded-For``, which the gateway believes only from a trusted proxy: run it with
``DISTILLGUARD_TRUSTED_PROXIES=127.0.0.1/32`` (loopback as the local load balancer; the demo
does); without it every simulated account would share 127.0.0.1, and the
cross-account linking would see one address where the population has hundreds. Prompts longer
than ``max_prompt_chars`` are cut in the middle (the head and tail of a template stay, which is
what template mining reads), so that a small local model's context does not answer a real
application's long documents with 400s. Refusals (429 throttled, 403 blocked) are counted
apart from failures (any other status, e.g. 400): only refusals are the enforcement the demo
is there to show.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import InputError, UpstreamError
from distillguard.sim.personas import SimAccount
from distillguard.sim.prompts import load_prompt_sets
from distillguard.sim.simulate import SimConfig, build_population
from distillguard.traffic import JsonlWriter, LabelRecord, TrafficRecord, prompt_text


@dataclass(frozen=True)
class LiveConfig:
    base_url: str  # the gateway, e.g. http://127.0.0.1:8000
    api_keys: tuple[str, ...] = ()  # used when no admin token is given
    admin_token: str | None = None  # creates one account and key per simulated account
    max_requests: int = 300  # requests sent in all (a sample of the population's plan)
    concurrency: int = 4  # requests in flight at once
    max_tokens: int = 32  # caps every request's max_tokens: a small local model stays quick
    timeout_s: float = 60.0  # per request
    seed: int = 0  # which arrivals are sampled
    # Longest message content sent, in characters (head + tail kept): ~4 characters a token
    # keeps a prompt well inside the 512-token context of the local teacher. None: no cut.
    max_prompt_chars: int | None = 1200
    forward_ip: bool = True  # send each simulated account's IP as X-Forwarded-For

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"--live needs an http(s) URL, got {self.base_url!r}")
        if not self.api_keys and not self.admin_token:
            raise InputError("--live needs --admin-token (to create accounts) or --api-key")
        if self.max_requests < 1 or self.concurrency < 1 or self.max_tokens < 1:
            raise InputError("max_requests, concurrency and max_tokens must be at least 1")
        if self.max_prompt_chars is not None and self.max_prompt_chars < 64:
            raise InputError("max_prompt_chars must be at least 64 (or None: no cut)")


@dataclass(frozen=True)
class LiveResult:
    sent: int
    ok: int
    refused: int  # 429 or 403: the gateway's enforcement
    failed: int  # any other error
    accounts: int


def _admin(base: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    try:
        r = httpx.post(
            f"{base.rstrip('/')}/admin{path}",
            json=body,
            timeout=30.0,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        raise UpstreamError(f"gateway admin API unreachable at {base}: {exc}") from exc
    if r.status_code >= 300:
        raise UpstreamError(f"admin {path} answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _provision(accounts: list[SimAccount], live: LiveConfig) -> dict[str, tuple[str, str]]:
    """Simulated account id -> (account id as the gateway knows it, API key secret)."""
    out: dict[str, tuple[str, str]] = {}
    if live.admin_token:
        stamp = int(time.time())
        for a in accounts:
            info = _admin(
                live.base_url,
                live.admin_token,
                "/accounts",
                {"name": f"sim-{stamp}-{a.account_id}", "payment_fingerprint": a.payment},
            )
            key = _admin(live.base_url, live.admin_token, "/keys", {"account": info["id"]})
            out[a.account_id] = (info["id"], key["secret"])
        return out
    for i, a in enumerate(accounts):
        k = i % len(live.api_keys)
        out[a.account_id] = (f"key#{k}", live.api_keys[k])
    return out


def _plan(actors: list, live: LiveConfig) -> list[tuple[float, int, int]]:
    """A time-ordered sample of ``max_requests`` arrivals (actor, account) of the population."""
    rows: list[tuple[float, int, int]] = []
    for i, actor in enumerate(actors):
        t, owner = actor.plan()
        rows.extend(zip(t.tolist(), [i] * len(t), owner.tolist(), strict=True))
    rows.sort()
    if len(rows) > live.max_requests:
        keep = np.sort(
            np.random.default_rng(live.seed).choice(len(rows), live.max_requests, replace=False)
        )
        rows = [rows[j] for j in keep]
    return rows


def _cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters: its head and tail with the middle left out."""
    if len(text) <= limit:
        return text
    head = (limit - 5) * 2 // 3
    return f"{text[:head]}\n...\n{text[len(text) - (limit - 5 - head) :]}"


def fit_prompt(body: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """The request with every message content (or the prompt) cut to ``limit`` characters."""
    if limit is None:
        return body
    if isinstance(body.get("prompt"), str):
        return {**body, "prompt": _cut(body["prompt"], limit)}
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return body
    out = [
        {**m, "content": _cut(m["content"], limit)}
        if isinstance(m, dict) and isinstance(m.get("content"), str)
        else m
        for m in msgs
    ]
    return {**body, "messages": out}


async def _send(
    client: Any, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, str | None, int | None]:
    """One request through the SDK: (HTTP status, first choice's text, completion tokens)."""
    import openai

    params = {k: v for k, v in body.items() if k not in ("messages", "prompt", "model")}
    if headers:
        params["extra_headers"] = headers
    try:
        if "messages" in body:
            if params.get("stream"):
                stream = await client.chat.completions.create(
                    model=body["model"], messages=body["messages"], **params
                )
                parts = []
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                return 200, "".join(parts), None
            resp = await client.chat.completions.create(
                model=body["model"], messages=body["messages"], **params
            )
            usage = resp.usage.completion_tokens if resp.usage else None
            return 200, resp.choices[0].message.content, usage
        resp = await client.completions.create(model=body["model"], prompt=body["prompt"], **params)
        return 200, resp.choices[0].text, resp.usage.completion_tokens if resp.usage else None
    except openai.APIStatusError as exc:
        return exc.status_code, None, None
    except openai.APIError:
        return 599, None, None  # connection failed or timed out


async def _drive(rows, actors, keys, live: LiveConfig, writer: JsonlWriter) -> LiveResult:
    import openai

    clients: dict[str, Any] = {}
    sem = asyncio.Semaphore(live.concurrency)
    counts = {"ok": 0, "refused": 0, "failed": 0}
    first = next(a for actor in actors for a in actor.accounts)
    model = await _model_name(
        live,
        keys[first.account_id][1],
        {"X-Forwarded-For": first.ips[0]} if live.forward_ip else {},
    )
    rng = random.Random(live.seed)  # which of an account's addresses each request comes from

    async def one(seq: int, i: int, acct_idx: int) -> None:
        actor = actors[i]
        acct = actor.accounts[acct_idx]
        body, _answer = actor.request(acct_idx)
        body = {
            **fit_prompt(body, live.max_prompt_chars),
            "model": model,
            "max_tokens": min(body.get("max_tokens") or live.max_tokens, live.max_tokens),
        }
        ip = acct.ips[0] if len(acct.ips) == 1 else rng.choice(acct.ips)
        headers = {"X-Forwarded-For": ip} if live.forward_ip else {}
        real_id, secret = keys[acct.account_id]
        client = clients.get(acct.account_id)
        if client is None:
            client = clients[acct.account_id] = openai.AsyncOpenAI(
                base_url=f"{live.base_url.rstrip('/')}/v1",
                api_key=secret,
                max_retries=0,
                timeout=live.timeout_s,
                default_headers={"User-Agent": acct.user_agent},
            )
        async with sem:
            ts = time.time()
            t0 = time.perf_counter()
            status, text, completion = await _send(client, body, headers)
            latency = (time.perf_counter() - t0) * 1000.0
        kind = "ok" if status == 200 else "refused" if status in (403, 429) else "failed"
        counts[kind] += 1
        writer.write(
            TrafficRecord(
                id=f"live-{live.seed}-{seq:07d}",
                ts=ts,
                account_id=real_id,
                key_id="-",
                ip=ip if live.forward_ip else "127.0.0.1",
                endpoint="/v1/chat/completions" if "messages" in body else "/v1/completions",
                request=body,
                status=status,
                user_agent=acct.user_agent,
                payment_fingerprint=acct.payment,
                response_text=text,
                prompt_tokens=max(1, len(prompt_text(body)) // 4),
                completion_tokens=completion,
                latency_ms=round(latency, 1),
            )
        )

    # Keep time order per account: start requests in plan order, at most `concurrency` apart.
    tasks = [asyncio.create_task(one(seq, i, a)) for seq, (_t, i, a) in enumerate(rows)]
    await asyncio.gather(*tasks)
    for c in clients.values():
        await c.close()
    return LiveResult(len(rows), counts["ok"], counts["refused"], counts["failed"], len(keys))


async def _model_name(live: LiveConfig, secret: str, headers: dict[str, str]) -> str:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"{live.base_url.rstrip('/')}/v1",
        api_key=secret,
        max_retries=0,
        timeout=live.timeout_s,
        default_headers=headers,
    )
    try:
        models = await client.models.list()
    except openai.APIError as exc:
        raise UpstreamError(f"gateway at {live.base_url} did not list models: {exc}") from exc
    finally:
        await client.close()
    if not models.data:
        raise UpstreamError(f"gateway at {live.base_url} serves no model")
    return models.data[0].id


def run_live(
    config: SimConfig, live: LiveConfig, *, data_dir: Path, out: Path, labels: Path
) -> LiveResult:
    """Provision the population on the gateway, send a sample of its plan, write both logs."""
    sets = load_prompt_sets(data_dir, config.split)
    actors = build_population(config, sets)
    accounts = [a for actor in actors for a in actor.accounts]
    keys = _provision(accounts, live)
    rows = _plan(actors, live)
    random.seed(config.seed)
    with JsonlWriter(labels) as lw:
        for a in accounts:
            lw.write(LabelRecord(keys[a.account_id][0], a.label, a.campaign_id, a.persona))
    with JsonlWriter(out) as w:
        return asyncio.run(_drive(rows, actors, keys, live, w))
