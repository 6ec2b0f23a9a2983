"""Honest organisations running integrations: machines, and legitimate.

Each builder returns the ``Actor``s of one organisation (a prod account and smaller staging
ones on one card and NAT) with a program closed over its own parameters. Integrations look
like machines: office hours of their customers, cron jobs, queue drains, one template,
temperature 0, JSON output, 24/7 services, benchmark sweeps with few-shot chain-of-thought,
tutors asking for step-by-step reasoning, routers that adopt a new model the day it ships.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from random import Random
from typing import Any

import orjson

from distillguard.sim.orgs import texts
from distillguard.sim.orgs.identity import (
    CLOUD_REGIONS,
    VPS_HOSTS,
    Egress,
    cloud_nat,
    new_id,
    payment_fingerprint,
    sdk_ua,
    ua_js,
    ua_python,
    vps_block,
)
from distillguard.sim.orgs.people import (
    FOLLOW_UPS,
    ZONE_REGION,
    ZONES,
    Maker,
    chat_answer,
    conversations,
)
from distillguard.sim.orgs.sources import clip
from distillguard.sim.orgs.timing import DAY, HOUR, cron, drain, onoff, poisson_day
from distillguard.sim.orgs.world import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
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


def _org(
    mk: Maker,
    persona: str,
    declared: str,
    program_for,
    accounts: int,
    verification: tuple[str, ...] = ("org", "enterprise"),
) -> list[Actor]:
    """An organisation: a prod account and smaller staging/dev accounts on one card and NAT."""
    rng = mk.rng
    org = mk.org_id()
    tz, country = mk.zone()
    region = ZONE_REGION[country] if rng.random() < 0.7 else rng.choice(tuple(CLOUD_REGIONS))
    nat = cloud_nat(rng, region, rng.randint(1, 3))
    if rng.random() < 0.2:  # a small company on rented VPS servers, like many campaigns
        block = vps_block(rng, rng.choice(tuple(VPS_HOSTS)))
        nat = tuple(f"{block}.{rng.randrange(2, 250)}" for _ in range(rng.randint(1, 2)))
    card = payment_fingerprint(rng)
    created = mk.created(900, 20)
    ua_old = sdk_ua(rng)
    ua_new = ua_python("1.97.0") if "Python" in ua_old else ua_js("5.1.0")
    tier = rng.choice(verification)
    span = mk.env.end - mk.env.start
    # half the organisations deploy a newer SDK during the period (the user agent changes)
    upgrade = (mk.env.start + rng.uniform(0.2, 0.9) * span, ua_new) if rng.random() < 0.5 else None
    out = []
    for i in range(accounts):
        scale = 1.0 if i == 0 else rng.uniform(0.02, 0.1)  # staging sees a trickle
        out.append(
            Actor(
                account_id=mk.account_id(),
                org_id=org,
                created_ts=min(created + i * rng.uniform(0, 30) * DAY, mk.env.start - DAY),
                verification=tier,
                declared_use=declared,
                persona=persona,
                label="honest",
                campaign_id=None,
                keys=mk.keys(rng.randint(1, 3)),
                egress=Egress(fixed=nat),
                user_agents=(ua_old,),
                ua_upgrade=upgrade,
                payment=card,
                program=program_for(tz, scale, mk.seed()),
            )
        )
    return out


def rag_docs(mk: Maker) -> list[Actor]:
    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        per_day = scale * g.uniform(150, 900)
        first = g.getrandbits(32)

        def program(r: Random, env: Env) -> Iterator[Call]:
            # the organisation's own document store: 300 consecutive passages of the pool
            pool = env.sources.passages
            store = [pool[(first + i) % len(pool)] for i in range(min(300, len(pool)))]
            for ts in poisson_day(r, env.start, env.end, per_day, tz, "office"):
                docs = r.sample(store, 3)
                words = [w.strip(",.;:!?'") for w in docs[0].split() if w[:1].isupper()]
                name = r.choice(words) if words else "the author"
                q = r.choice(
                    (
                        "What does {n} say about this?",
                        "Summarize passage [1].",
                        "Who is speaking in [2] and why?",
                        "Find every mention of {n}.",
                        "What happened before {n} spoke?",
                    )
                ).format(n=name)
                if r.random() < 0.35:
                    yield Call(
                        ts,
                        EMBEDDINGS,
                        {"model": "atlas-embed-1", "input": q},
                        None,
                        0,
                        response={
                            "object": "list",
                            "model": "atlas-embed-1",
                            "data": [{"object": "embedding", "index": 0}],
                        },
                    )
                    ts += r.uniform(0.05, 0.4)
                ctx = "\n\n".join(f"[{i + 1}] {d}" for i, d in enumerate(docs))
                req = chat_request(
                    "atlas-1",
                    [
                        system_msg(
                            "Answer only from the numbered passages. "
                            "Cite them like [1]. Say 'not in the documents' otherwise."
                        ),
                        user_msg(f"Context:\n{ctx}\n\nQuestion: {q}"),
                    ],
                    temperature=0.1,
                    max_tokens=400,
                )
                yield reply(ts, req, clip(docs[0], r.randint(150, 900)) + " [1]")

        return program

    rng = mk.rng
    return _org(
        mk,
        "app-rag-docs",
        rng.choice(("internal knowledge base search", "document Q&A for our customers")),
        program_for,
        rng.randint(1, 3),
    )


def translation(mk: Maker) -> list[Actor]:
    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        base = scale * g.uniform(100, 600)
        on_rate = scale * g.uniform(0.05, 0.25)
        langs = g.sample(texts.LANGS[1:], g.randint(2, 5))

        def program(r: Random, env: Env) -> Iterator[Call]:
            steady = poisson_day(r, env.start, env.end, base, tz, "global")
            jobs = onoff(r, env.start, env.end, on_rate, 20 * 60, 6 * HOUR)
            for ts in heapq.merge(steady, jobs):
                lang = r.choice(langs)
                src, en = texts.parallel_text(r, lang, r.randint(1, 8))
                if r.random() < 0.3:
                    lang, src, en = "en", en, src  # the other direction: English source
                    target = "the customer's language"
                else:
                    target = "English"
                req = chat_request(
                    "atlas-1-mini",
                    [
                        system_msg(
                            f"You are a professional translator. "
                            f"Translate from {texts.LANG_NAMES[lang]} to {target}. Output only the "
                            "translation."
                        ),
                        user_msg(src),
                    ],
                    temperature=0,
                    max_tokens=2 * tokens_of(src) + 50,
                )
                yield reply(ts, req, en)

        return program

    return _org(mk, "app-translation", "translation service", program_for, mk.rng.randint(1, 2))


CODE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_tests",
            "parameters": {"type": "object", "properties": {"target": {"type": "string"}}},
        },
    },
]


def code_assistant(mk: Maker) -> list[Actor]:
    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        per_day = scale * g.uniform(300, 1200)
        zones = [tz, *g.sample([z for z, _ in ZONES], 2)]  # developers in three zones

        def program(r: Random, env: Env) -> Iterator[Call]:
            arrivals = heapq.merge(
                *(poisson_day(r, env.start, env.end, per_day / 3, z, "office") for z in zones)
            )
            for ts in arrivals:
                lang, code = texts.code_snippet(r)
                task = r.choice(texts.CODE_TASKS)
                tools = r.random() < 0.4
                req = chat_request(
                    "atlas-2" if ts > env.new_model_ts + 3 * DAY else "atlas-1",
                    [
                        system_msg(
                            "You are an IDE coding assistant. Answer with code blocks; be concise."
                        ),
                        user_msg(f"{task}\n\n```{lang}\n{code}```"),
                    ],
                    temperature=0.2,
                    max_tokens=1024,
                    stream=True,
                    tools=CODE_TOOLS if tools else None,
                )
                if tools and r.random() < 0.3:
                    call = {
                        "id": new_id(r, "call_", 64),
                        "type": "function",
                        "function": {"name": "run_tests", "arguments": '{"target": "tests/"}'},
                    }
                    yield Call(
                        ts,
                        CHAT,
                        req,
                        "",
                        18,
                        choices=[
                            {
                                "index": 0,
                                "text": "",
                                "finish_reason": "tool_calls",
                                "tool_calls": [call],
                            }
                        ],
                    )
                    continue
                body = f"```{lang}\n{code}```\n" + clip(
                    r.choice(env.sources.answers), r.randint(100, 700)
                )
                yield reply(ts, req, body)

        return program

    return _org(
        mk,
        "app-code-assistant",
        "developer tools (IDE assistant)",
        program_for,
        mk.rng.randint(1, 3),
    )


def etl_classify(mk: Maker) -> list[Actor]:
    # every third organisation (the first included) is half-way through a migration: an old
    # pipeline on /v1/completions with logprobs still serves half of its records
    legacy = mk.nth("app-etl-classify") % 3 == 0

    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        batch = int(scale * g.uniform(150, 1200)) + 5
        kind = g.choice(("review", "ticket", "invoice"))
        hour = g.uniform(1, 4)

        def program(r: Random, env: Env) -> Iterator[Call]:
            runs = cron(r, env.start, env.end, DAY, (hour - tz) * HOUR % DAY, 120)
            hourly = cron(r, env.start, env.end, HOUR, r.uniform(0, HOUR), 30)
            busy = env.start  # one worker pool: a job waits for the one before it
            for t0, size in heapq.merge(
                ((t, batch) for t in runs), ((t, r.randint(0, batch // 40 + 1)) for t in hourly)
            ):
                for ts in drain(r, max(t0, busy), size, r.choice((2, 4, 6)), 0.6):
                    busy = ts
                    rec, truth = texts.etl_record(r, kind)
                    if legacy and r.random() < 0.5:  # half migrated to chat + JSON
                        req = {
                            "model": "atlas-1-mini",
                            "prompt": "Classify the record as "
                            f"positive, negative or neutral.\nRecord: {rec}\nLabel:",
                            "max_tokens": 3,
                            "temperature": 0,
                            "logprobs": 5,
                        }
                        label = truth.get("sentiment", "neutral")
                        yield Call(ts, COMPLETIONS, req, " " + label, 1)
                        continue
                    req = chat_request(
                        "atlas-1-mini",
                        [
                            system_msg(
                                f"Extract the fields of this {kind} as "
                                "JSON. Use null for missing fields."
                            ),
                            user_msg(rec),
                        ],
                        temperature=0,
                        max_tokens=200,
                        response_format={"type": "json_object"},
                    )
                    bad = "max_tokens below the JSON answer" if r.random() < 0.002 else None
                    yield Call(ts, CHAT, req, orjson.dumps(truth).decode(), 30, invalid=bad)

        return program

    return _org(
        mk,
        "app-etl-classify",
        "data extraction and classification",
        program_for,
        mk.rng.randint(1, 2),
    )


def edu_tutor(mk: Maker) -> list[Actor]:
    def program_for(tz: float, scale: float, seed: int):
        per_day = scale * Random(seed).uniform(200, 1000)

        def program(r: Random, env: Env) -> Iterator[Call]:
            starts = poisson_day(r, env.start, env.end, per_day / 2.5, tz, "student")
            state: dict[int, list[dict[str, Any]]] = {}
            for ts, conv, turn, last in conversations(r, starts, 2.5, 90.0):
                msgs = state.pop(conv, None)
                if turn == 0 or msgs is None:
                    q, a = texts.school_exercise(r)
                    msgs = [
                        system_msg(
                            "You are a patient tutor. Guide the "
                            "student step by step; do not just give the final answer."
                        )
                    ]
                else:
                    q, a = (
                        r.choice(
                            (
                                "I don't get step 2",
                                "is it 7?",
                                "ok next one",
                                "can you explain again simpler",
                            )
                        ),
                        "Let's look again. ",
                    )
                msgs = [*msgs[-5:], user_msg(q)]
                think = r.random() < 0.2
                req = chat_request(
                    "atlas-1-think" if think else "atlas-1",
                    list(msgs),
                    temperature=0.5,
                    max_tokens=600,
                    reasoning_effort="low" if think else None,
                    user=f"stu_{(conv * 2654435761) % 40009:05d}",  # a pool of students
                )
                text = a + " " + clip(r.choice(env.sources.answers), r.randint(200, 1200))
                msgs.append({"role": "assistant", "content": clip(text, 400)})
                if not last:  # only open conversations are remembered
                    state[conv] = msgs
                yield reply(ts, req, text)

        return program

    return _org(
        mk, "app-edu-tutor", "education platform (K-12 tutoring)", program_for, mk.rng.randint(1, 2)
    )


def support_bot(mk: Maker) -> list[Actor]:
    return _org(
        mk, "app-support-bot", "customer support chatbot", support_program_for, mk.rng.randint(1, 3)
    )


def support_program_for(tz: float, scale: float, seed: int):
    """The support bot's program (also the cover of a campaign hiding in such an account)."""
    g = Random(seed)
    per_day = scale * g.uniform(80, 400)
    company = g.choice(texts._COMPANIES)

    def program(r: Random, env: Env) -> Iterator[Call]:
        starts = poisson_day(r, env.start, env.end, per_day, tz, "person")
        state: dict[int, list[dict[str, Any]]] = {}
        for ts, conv, turn, last in conversations(r, starts, 3.0, 45.0):
            msgs = state.pop(conv, None)
            if turn == 0 or msgs is None:
                msgs = [system_msg(texts.support_system(company))]
            user = user_msg(texts.support_turn(r, turn == 0))
            msgs = [msgs[0], *msgs[1:][-6:], user]
            req = chat_request(
                "atlas-1-mini",
                list(msgs),
                temperature=0.3,
                max_tokens=300,
                user=f"cust-{conv % 100000}",
            )
            text = clip(r.choice(env.sources.answers), r.randint(80, 500))
            msgs.append({"role": "assistant", "content": text})
            if not last:  # only open conversations are remembered
                state[conv] = msgs
            yield reply(ts, req, text)

    return program


def news_digest(mk: Maker) -> list[Actor]:
    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        period = g.choice((15, 20, 30)) * 60.0
        per_run = max(1, int(scale * g.uniform(3, 12)))
        headlines = g.random() < 0.5

        def program(r: Random, env: Env) -> Iterator[Call]:
            arts = env.sources.news_articles or env.sources.passages
            for t0 in cron(r, env.start, env.end, period, r.uniform(0, period), 20.0):
                for ts in drain(r, t0, r.randint(1, per_run), 2, 4.0):
                    art = clip(r.choice(arts), 6000)
                    if headlines and r.random() < 0.3:
                        req = chat_request(
                            "atlas-1-mini",
                            [user_msg(f"Write a headline for this article.\n\n{art}")],
                            n=3,
                            temperature=0.9,
                            max_tokens=30,
                        )
                        heads = [clip(art, r.randint(40, 90)) for _ in range(3)]
                        yield Call(
                            ts,
                            CHAT,
                            req,
                            heads[0],
                            45,
                            choices=choice_list(heads),
                        )
                        continue
                    req = chat_request(
                        "atlas-1",
                        [
                            user_msg(
                                "Summarize this article in 3 bullet points for our newsletter. "
                                f"Keep names and numbers.\n\nARTICLE:\n{art}"
                            )
                        ],
                        temperature=0.3,
                        max_tokens=300,
                    )
                    sents = art.split(". ")
                    yield reply(ts, req, "\n".join(f"- {s.strip()}." for s in sents[:3]))

        return program

    return _org(mk, "app-news-digest", "news summarization", program_for, 1)


GSM_SHOTS = 4


def benchmark_eval(mk: Maker) -> list[Actor]:
    """An evaluation team: sweeps a public benchmark split, again on every new model."""

    def program_for(tz: float, scale: float, seed: int):
        g = Random(seed)
        every = g.uniform(5, 9) * DAY

        def program(r: Random, env: Env) -> Iterator[Call]:
            src = env.sources
            shots = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in src.gsm8k_train[:GSM_SHOTS])
            starts = [
                env.start + r.uniform(0.1, 2) * DAY,
                env.new_model_ts + r.uniform(1, 8) * HOUR,
            ]
            t = starts[0] + every
            while t < env.end:
                starts.append(t)
                t += every
            starts.sort()
            runs = []
            for t0 in starts:
                model = "atlas-2" if t0 >= env.new_model_ts else "atlas-1"
                runs.append((t0, model))
                if r.random() < 0.5:
                    runs.append((t0 + r.uniform(2, 6) * HOUR, "atlas-1-mini"))
            runs.sort()
            items = src.gsm8k_test[: max(20, int(len(src.gsm8k_test) * scale))]
            chats = src.chat_prompts[: max(10, int(300 * scale))]
            last = env.start
            for t0, model in runs:
                t0 = max(t0, last)
                sc = r.random() < 0.3  # self-consistency pass: n samples at temperature 0.7
                ts = t0
                for ts, (q, a) in zip(drain(r, t0, len(items), 8, 3.0), items, strict=False):
                    req = chat_request(
                        model,
                        [user_msg(f"{shots}\n\nQ: {q}\nA: Let's think step by step.")],
                        temperature=0.7 if sc else 0,
                        seed=1234,
                        max_tokens=512,
                        n=5 if sc else None,
                    )
                    choices = choice_list([a] * 5) if sc else None
                    yield Call(ts, CHAT, req, a, tokens_of(a) * (5 if sc else 1), choices=choices)
                t1 = ts + 60
                for ts, q in zip(drain(r, t1, len(chats), 8, 6.0), chats, strict=False):
                    req = chat_request(
                        model,
                        [user_msg(q)],
                        temperature=0,
                        max_tokens=2048,
                        seed=1234,
                    )
                    yield reply(ts, req, src.answer(r, q, 6000))
                last = ts + 1

        return program

    return _org(mk, "team-benchmark-eval", "model evaluation", program_for, 1)


def router(mk: Maker) -> list[Actor]:
    """A legitimate reseller: thousands of end users (``user``) behind one account."""

    def program_for(tz: float, scale: float, seed: int):
        per_day = scale * Random(seed).uniform(800, 2500)
        return router_program(per_day, harvest_per_day=0.0, harvesters=())

    return _org(
        mk, "app-router", "LLM routing platform for end users", program_for, 1, ("enterprise",)
    )


def router_program(per_day: float, harvest_per_day: float, harvesters: tuple[str, ...]):
    """End users' conversations in every zone; optionally a few end users harvesting."""

    def program(r: Random, env: Env) -> Iterator[Call]:
        starts = poisson_day(r, env.start, env.end, per_day / 3, 0.0, "global")
        honest = ((t, c, turn, None) for t, c, turn, _ in conversations(r, starts, 3.0, 60.0))
        bad = (
            (
                (t, 0, 0, r.choice(harvesters))
                for t in poisson_day(r, env.start, env.end, harvest_per_day, 0.0, "global")
            )
            if harvesters
            else iter(())
        )
        for ts, conv, turn, harvester in heapq.merge(honest, bad):
            if harvester is not None:
                q = texts.broad_prompt(r, env.sources)
                user = harvester
                model = env.newest(ts)
            else:
                q = r.choice(env.sources.chat_prompts) if turn == 0 else r.choice(FOLLOW_UPS)
                user = f"u_{(conv * 2654435761) % 10**9:09d}"
                model = r.choice(("atlas-1", "atlas-1-mini", env.newest(ts), env.newest(ts)))
            req = chat_request(
                model,
                [user_msg(q)],
                user=user,
                stream=r.random() < 0.6,
                max_tokens=r.choice((None, 4096)),
            )
            yield reply(ts, req, chat_answer(env, r, q, None))

    return program
