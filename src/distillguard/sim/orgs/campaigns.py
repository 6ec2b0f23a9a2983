"""Distillation campaigns: actors that want the model's answers over the capability space.

What they extract is broad (every topic, the public data sets, capability sweeps) and that is
the one thing they cannot hide. Everything else they try to: no chain-of-thought requests at
all, people's timing, an established account's cover traffic, a router's end users, other
languages, paraphrases. Their infrastructure leaves imperfect traces: some rented VPS /24s,
residential proxies for part of the traffic, a handful of prepaid cards over many accounts (and
some accounts with none), creation bursts, one SDK version for most workers, a shared work
schedule. None of the traces is on every account.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from random import Random

from distillguard.sim.orgs import texts
from distillguard.sim.orgs.apps import router_program, support_program_for
from distillguard.sim.orgs.identity import (
    CLOUD_REGIONS,
    PY_SDK,
    Egress,
    cloud_nat,
    ip_in,
    payment_fingerprint,
    person_ua,
    sdk_ua,
    ua_python,
    vps_block,
)
from distillguard.sim.orgs.people import ZONES, Maker, chat_answer
from distillguard.sim.orgs.timing import DAY, HOUR, onoff, poisson_day, sessions
from distillguard.sim.orgs.world import (
    CHAT,
    Actor,
    Call,
    Env,
    chat_request,
    choice_list,
    reply,
    system_msg,
    tokens_of,
    user_msg,
)

COT_SYSTEMS = (
    "Think step by step. Write out your full reasoning before giving the final answer.",
    "You are an expert tutor. Show every intermediate step of your reasoning in detail.",
    "First reason carefully inside <thinking> tags, then answer.",
)
COT_SUFFIXES = (
    "\n\nLet's think step by step.",
    "\n\nExplain your reasoning step by step.",
    "\n\nShow all your work.",
    "",
)


def _cards(rng: Random, accounts: int, per_card: int, none_share: float) -> list[str | None]:
    """A few cards spread over many accounts; ``none_share`` of the accounts show none (at
    least one when there is a share at all): the trace is there, never on every account."""
    cards = [payment_fingerprint(rng) for _ in range(max(2, accounts // per_card))]
    out: list[str | None] = [cards[i % len(cards)] for i in range(accounts)]
    for i in range(max(1, round(none_share * accounts)) if none_share > 0 else 0):
        out[i] = None
    rng.shuffle(out)
    return out


def _actor(
    mk: Maker,
    persona: str,
    cid: str,
    created: float,
    verification: str,
    declared: str | None,
    egress: Egress,
    uas: tuple[str, ...],
    payment: str | None,
    program,
    keys: int = 1,
    org: str | None = None,
    key_mode: str = "spread",
) -> Actor:
    return Actor(
        account_id=mk.account_id(),
        org_id=org,
        created_ts=created,
        verification=verification,
        declared_use=declared,
        persona=persona,
        label="campaign",
        campaign_id=cid,
        keys=mk.keys(keys),
        egress=egress,
        user_agents=uas,
        payment=payment,
        program=program,
        key_mode=key_mode,
    )


LIES = (
    None,
    None,
    "personal assistant",
    "chatbot for my website",
    "research",
    "content generation",
    "learning",
)


def work_windows(seed: int, start: float, end: float) -> Iterator[tuple[float, float]]:
    """A coordinator's schedule: the queue is open for hours, then closed (same seed, same
    windows for every worker: their timing is synchronised without being identical)."""
    g = Random(seed)
    t = start + g.uniform(0, 3 * HOUR)
    while t < end:
        w1 = t + g.uniform(2, 8) * HOUR
        yield t, w1
        t = w1 + g.uniform(1, 6) * HOUR


def harvest_swarm(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Chat harvest without CoT over many young accounts, dispatched from one work queue."""
    rng = mk.rng
    blocks = [vps_block(rng, h) for h in rng.sample(("hetzner", "digitalocean", "ovh"), 2)]
    burst = mk.env.start - rng.uniform(1, 5) * DAY
    span = mk.env.end - mk.env.start
    cards = _cards(rng, size, 5, 0.15)
    schedule_seed = mk.seed()  # the coordinator's on/off windows, shared by every worker
    main_ua = ua_python("1.54.3")
    out = []
    for i in range(size):
        if i < int(size * 0.6):
            created = burst + rng.uniform(0, 36 * HOUR)
        else:
            # later waves, some during the (first half of the) period
            created = burst + rng.uniform(0, min(12 * DAY, mk.env.start - burst + 0.5 * span))
        fixed = tuple(f"{rng.choice(blocks)}.{rng.randrange(2, 250)}" for _ in range(2))
        egress = Egress(
            fixed=fixed, rotate="proxy" if rng.random() < 0.3 else None, fixed_share=0.35
        )
        ua = (
            main_ua
            if rng.random() < 0.75
            else rng.choice(("python-requests/2.32.3", ua_python("1.51.2")))
        )
        rate = rng.uniform(0.005, 0.015)  # requests/s while the queue is open

        def program(
            r: Random, env: Env, created: float = created, rate: float = rate
        ) -> Iterator[Call]:
            t = max(env.start, created + r.uniform(600, 4 * HOUR))
            # the coordinator opens the queue for hours at a time; every worker follows
            for w0, w1 in work_windows(schedule_seed, env.start, env.end):
                if w1 <= t:
                    continue
                t = max(t, w0 + r.uniform(0, 30))
                while t < w1:
                    q = texts.broad_prompt(r, env.sources)
                    mt = r.choice((None, 2048, 4096))
                    req = chat_request(
                        env.newest(t),
                        [user_msg(q)],
                        temperature=r.choice((None, 0.7, 1.0)),
                        max_tokens=mt,
                    )
                    yield reply(t, req, chat_answer(env, r, q, mt))
                    t += r.expovariate(rate)

        out.append(
            _actor(
                mk,
                "harvest-swarm",
                cid,
                created,
                rng.choice(("none", "email")),
                rng.choice(LIES),
                egress,
                (ua,),
                cards[i],
                program,
            )
        )
    return out


def harvest_low_slow(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Few requests a day per account at people's hours from households: patience as cover."""
    rng = mk.rng
    cards = _cards(rng, size, 2, 0.3)
    out = []
    for i in range(size):
        tz, country = rng.choice(ZONES)
        per_day = rng.uniform(3, 8)

        def program(
            r: Random, env: Env, tz: float = tz, per_day: float = per_day
        ) -> Iterator[Call]:
            for ts, _turn in sessions(r, env.start, env.end, per_day, tz, "person", 2.5, 120.0):
                q = texts.broad_prompt(r, env.sources)
                req = chat_request(
                    env.newest(ts),
                    [user_msg(q)],
                    stream=True,
                    max_tokens=r.choice((None, 2048)),
                )
                yield reply(ts, req, chat_answer(env, r, q, None))

        out.append(
            _actor(
                mk,
                "harvest-low-slow",
                cid,
                mk.created(80, 5),
                "email",
                rng.choice(LIES),
                Egress(rotate="home", country=country),
                (person_ua(rng),),
                cards[i],
                program,
            )
        )
    return out


def harvest_cover(mk: Maker, size: int, cid: str) -> list[Actor]:
    """An established, verified support-bot account that starts harvesting mid-period."""
    rng = mk.rng
    out = []
    for _ in range(size):
        tz, _country = rng.choice(ZONES)
        cover = support_program_for(tz, 1.0, mk.seed())
        share = rng.uniform(0.25, 0.5)
        onset = rng.uniform(0.2, 0.5)

        def program(
            r: Random, env: Env, cover=cover, share=share, onset=onset, tz=tz
        ) -> Iterator[Call]:
            begin = env.start + onset * (env.end - env.start)
            honest = cover(r, env)
            # the harvest rides on the bot's own volume (about 200 conversations a day)
            extra = poisson_day(r, begin, env.end, 600 * share, tz, "person")
            tagged = heapq.merge(((c.ts, 0, c) for c in honest), ((t, 1, None) for t in extra))
            for ts, _k, call in tagged:
                if call is not None:
                    yield call
                    continue
                q = texts.broad_prompt(r, env.sources)
                req = chat_request(
                    "atlas-1-mini",
                    [user_msg(q)],
                    temperature=0.3,
                    max_tokens=300,
                )
                yield reply(ts, req, chat_answer(env, r, q, 300))

        region = rng.choice(tuple(CLOUD_REGIONS))
        ua = sdk_ua(rng)
        out.append(
            _actor(
                mk,
                "harvest-cover",
                cid,
                mk.created(600, 150),
                "org",
                "customer support chatbot",
                Egress(fixed=cloud_nat(rng, region, 2)),
                (ua,),
                payment_fingerprint(rng),
                program,
                keys=2,
                org=mk.org_id(),
            )
        )
    return out


def harvest_via_router(mk: Maker, size: int, cid: str) -> list[Actor]:
    """A reseller whose honest end users hide a few end users harvesting around the clock."""
    rng = mk.rng
    out = []
    for _ in range(size):
        harvesters = tuple(f"u_{rng.randrange(10**9):09d}" for _ in range(rng.randint(2, 5)))
        prog = router_program(rng.uniform(800, 2000), rng.uniform(200, 500), harvesters)
        region = rng.choice(tuple(CLOUD_REGIONS))
        out.append(
            _actor(
                mk,
                "harvest-via-router",
                cid,
                mk.created(400, 60),
                "org",
                "LLM routing platform for end users",
                Egress(fixed=cloud_nat(rng, region, 2)),
                (sdk_ua(rng),),
                payment_fingerprint(rng),
                prog,
                keys=2,
                org=mk.org_id(),
            )
        )
    return out


def harvest_multilingual(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Broad harvest asked in seven languages (the answers teach a multilingual student)."""
    rng = mk.rng
    block = vps_block(rng, "ovh")
    cards = _cards(rng, size, 3, 0.2)
    out = []
    for i in range(size):
        per_day = rng.uniform(150, 400)
        langs = rng.sample(tuple(texts.MULTILINGUAL_FRAMES), rng.randint(2, 4))

        def program(r: Random, env: Env, per_day=per_day, langs=langs) -> Iterator[Call]:
            for ts in poisson_day(r, env.start, env.end, per_day, 0.0, "global"):
                lang = r.choice(langs)
                q = texts.MULTILINGUAL_FRAMES[lang].format(p=texts.broad_prompt(r, env.sources))
                if r.random() < 0.2:
                    src, _en = texts.parallel_text(r, lang, r.randint(1, 3))
                    q = f"{src}\n\n{q}"
                req = chat_request(
                    env.newest(ts),
                    [user_msg(q)],
                    temperature=0.8,
                    max_tokens=2048,
                )
                yield reply(ts, req, chat_answer(env, r, q, 2048))

        egress = Egress(
            fixed=(f"{block}.{rng.randrange(2, 250)}",), rotate="proxy", fixed_share=0.5
        )
        out.append(
            _actor(
                mk,
                "harvest-multilingual",
                cid,
                mk.young(20, 0.2),
                rng.choice(("none", "email")),
                rng.choice(LIES),
                egress,
                (sdk_ua(rng),),
                cards[i],
                program,
            )
        )
    return out


def harvest_model_hopper(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Trickles on the old model, then switches within hours of the newest model's release."""
    rng = mk.rng
    region = rng.choice(tuple(CLOUD_REGIONS))
    out = []
    for _ in range(size):
        low, high = rng.uniform(20, 60), rng.uniform(400, 900)
        delay = rng.uniform(0.2, 2.0) * HOUR

        def program(r: Random, env: Env, low=low, high=high, delay=delay) -> Iterator[Call]:
            switch = env.new_model_ts + delay
            before = poisson_day(r, env.start, min(switch, env.end), low, 0.0, "global")
            after = poisson_day(r, min(switch, env.end), env.end, high, 0.0, "global")
            for ts in heapq.merge(before, after):
                q = texts.broad_prompt(r, env.sources)
                model = "atlas-2" if ts >= switch else "atlas-1"
                req = chat_request(model, [user_msg(q)], max_tokens=4096)
                yield reply(ts, req, chat_answer(env, r, q, 4096))

        out.append(
            _actor(
                mk,
                "harvest-model-hopper",
                cid,
                mk.created(90, 20),
                "email",
                rng.choice(LIES),
                Egress(fixed=cloud_nat(rng, region, 1)),
                (ua_python(rng.choice(PY_SDK[-3:])),),
                payment_fingerprint(rng),
                program,
            )
        )
    return out


def harvest_hydra_cot(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Many heads, each eliciting full chain-of-thought on math and broad prompts."""
    rng = mk.rng
    block = vps_block(rng, "digitalocean")
    cards = _cards(rng, size, 4, 0.1)
    out = []
    for i in range(size):
        per_day = rng.uniform(200, 600)
        if rng.random() < 0.4:  # some heads run in a cloud region other tenants use too
            egress = Egress(fixed=cloud_nat(rng, "aws-us-east-1", 1))
        else:
            egress = Egress(fixed=(f"{block}.{rng.randrange(2, 250)}",))

        def program(r: Random, env: Env, per_day=per_day) -> Iterator[Call]:
            src = env.sources
            for ts in poisson_day(r, env.start, env.end, per_day, 0.0, "global"):
                if r.random() < 0.5:
                    q, a = r.choice(src.gsm8k_train)
                else:
                    q, a = texts.broad_prompt(r, env.sources), None
                think = r.random() < 0.5
                req = chat_request(
                    "atlas-1-think" if think else env.newest(ts),
                    [
                        system_msg(r.choice(COT_SYSTEMS)),
                        user_msg(q + r.choice(COT_SUFFIXES)),
                    ],
                    reasoning_effort="high" if think else None,
                    max_tokens=4096,
                    temperature=None if think else 0.6,
                )
                text = a if a is not None else chat_answer(env, r, q, 4096)
                yield reply(ts, req, text)

        out.append(
            _actor(
                mk,
                "harvest-hydra-cot",
                cid,
                mk.young(14, 0.25),
                rng.choice(("none", "email")),
                rng.choice(LIES),
                egress,
                (sdk_ua(rng),),
                cards[i],
                program,
                keys=rng.randint(1, 3),
                key_mode="rotate",
            )
        )
    return out


def harvest_bulk(mk: Maker, size: int, cid: str) -> list[Actor]:
    """One paid account sweeping the templated and benchmark sets in order, n samples each."""
    rng = mk.rng
    out = []
    for _ in range(size):
        rate = rng.uniform(0.4, 0.8)  # requests/s while running: near the tier's limit

        def program(r: Random, env: Env, rate=rate) -> Iterator[Call]:
            src = env.sources
            items = [*src.t0_prompts, *(q for q, _ in src.gsm8k_train)]
            i = r.randrange(len(items))
            for ts in onoff(r, env.start, env.end, rate, 6 * 60.0, 84 * 60.0):
                q = items[i % len(items)]
                i += 1
                n = r.choice((2, 4))
                req = chat_request(
                    env.newest(ts),
                    [user_msg(q)],
                    n=n,
                    temperature=1.0,
                    max_tokens=1024,
                    logprobs=True,
                    top_logprobs=5,
                )
                answers = [chat_answer(env, r, q, 1024) for _ in range(n)]
                ctok = sum(map(tokens_of, answers))
                yield Call(ts, CHAT, req, answers[0], ctok, choices=choice_list(answers))

        region = rng.choice(("gcp-us-central1", "aws-us-east-1"))
        out.append(
            _actor(
                mk,
                "harvest-bulk",
                cid,
                mk.created(40, 10),
                "email",
                "research",
                Egress(fixed=cloud_nat(rng, region, 1)),
                (ua_python("1.68.2"),),
                payment_fingerprint(rng),
                program,
                keys=3,
                org=mk.org_id(),
                key_mode="rotate",
            )
        )
    return out


def harvest_paraphrase(mk: Maker, size: int, cid: str) -> list[Actor]:
    """Each seed prompt sent in several paraphrases at high temperature, moments apart."""
    rng = mk.rng
    block = vps_block(rng, "hetzner")
    cards = _cards(rng, size, 3, 0.2)
    out = []
    for i in range(size):
        per_day = rng.uniform(40, 100)  # seeds a day; each becomes 3-6 requests

        def program(r: Random, env: Env, per_day=per_day) -> Iterator[Call]:
            for t0 in poisson_day(r, env.start, env.end, per_day, 0.0, "global"):
                seed = texts.broad_prompt(r, env.sources)
                ts = t0
                for _ in range(r.randint(3, 6)):
                    q = texts.paraphrase(r, seed)
                    req = chat_request(
                        env.newest(ts),
                        [user_msg(q)],
                        temperature=round(r.uniform(0.9, 1.2), 1),
                        max_tokens=2048,
                    )
                    yield reply(ts, req, chat_answer(env, r, seed, 2048))
                    ts += r.uniform(2, 40)

        egress = Egress(
            fixed=(ip_in(block.rsplit(".", 1)[0], rng), f"{block}.{rng.randrange(2, 250)}")
        )
        out.append(
            _actor(
                mk,
                "harvest-paraphrase",
                cid,
                mk.young(10, 0.2),
                "email",
                rng.choice(LIES),
                egress,
                (sdk_ua(rng),),
                cards[i],
                program,
            )
        )
    return out


# campaign persona -> (builder, accounts at 2,000 accounts, minimum accounts)
CAMPAIGNS = {
    "harvest-swarm": (harvest_swarm, 30, 6),
    "harvest-low-slow": (harvest_low_slow, 10, 3),
    "harvest-cover": (harvest_cover, 2, 1),
    "harvest-via-router": (harvest_via_router, 1, 1),
    "harvest-multilingual": (harvest_multilingual, 6, 2),
    "harvest-model-hopper": (harvest_model_hopper, 4, 2),
    "harvest-hydra-cot": (harvest_hydra_cot, 20, 4),
    "harvest-bulk": (harvest_bulk, 2, 1),
    "harvest-paraphrase": (harvest_paraphrase, 5, 2),
}
