"""People: accounts of their own, used on their local day, and a university course.

A person's sessions follow a diurnal curve in their time zone with a few turns of reading and
typing between requests; heavy users chat for hours, code, and ask about everything. A course
cohort is the honest face of shared infrastructure: accounts made in one afternoon behind one
university NAT and one institutional card, running the same assignment in the weekly lab.
The shared pieces (``Maker``, overlapping ``conversations``) serve the other personas too.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from random import Random
from typing import Any

import orjson

from distillguard.sim.orgs import texts
from distillguard.sim.orgs.identity import (
    RESIDENTIAL,
    UNIVERSITY_NAT,
    VPS_HOSTS,
    Egress,
    ip_in,
    new_id,
    payment_fingerprint,
    person_ua,
    ua_python,
    vps_block,
)
from distillguard.sim.orgs.sources import clip
from distillguard.sim.orgs.timing import DAY, HOUR, sessions
from distillguard.sim.orgs.world import (
    Actor,
    Call,
    Env,
    chat_request,
    reply,
    system_msg,
    user_msg,
)

# (UTC offset hours, residential country) people and organisations live in.
ZONES = (
    (-8.0, "us"),
    (-5.0, "us"),
    (-6.0, "us"),
    (0.0, "gb"),
    (1.0, "de"),
    (1.0, "fr"),
    (-3.0, "br"),
    (5.5, "in"),
    (9.0, "jp"),
)
ZONE_REGION = {
    "us": "aws-us-east-1",
    "gb": "aws-eu-west-1",
    "de": "azure-westeurope",
    "fr": "aws-eu-west-1",
    "br": "gcp-us-central1",
    "in": "aws-ap-southeast-1",
    "jp": "aws-ap-southeast-1",
}
FOLLOW_UPS = (
    "Can you make that shorter?",
    "Thanks! Can you give an example?",
    "Why is that?",
    "What about the opposite case?",
    "ok",
    "Can you rewrite it in a friendlier tone?",
    "Explain the second point more.",
    "Is that right?",
)


class Maker:
    """Deals ids, creation times and places from the world's generator (build time only)."""

    def __init__(self, rng: Random, env: Env) -> None:
        self.rng = rng
        self.env = env
        self._made: dict[str, int] = {}

    def account_id(self) -> str:
        return new_id(self.rng, "acct_", 48)

    def org_id(self) -> str:
        return new_id(self.rng, "org_", 40)

    def keys(self, n: int) -> tuple[str, ...]:
        return tuple(new_id(self.rng, "key_", 48) for _ in range(n))

    def created(self, days_before_max: float, days_before_min: float = 0.0) -> float:
        return self.env.start - self.rng.uniform(days_before_min, days_before_max) * DAY

    def young(self, days_before_max: float, during_share: float) -> float:
        """A recent sign-up: within ``days_before_max`` days before the period, or (with
        probability ``during_share``) in the first half of the period itself."""
        if self.rng.random() < during_share:
            return self.env.start + self.rng.uniform(0.0, 0.5) * (self.env.end - self.env.start)
        return self.created(days_before_max, 0.0)

    def zone(self) -> tuple[float, str]:
        return self.rng.choice(ZONES)

    def seed(self) -> int:
        return self.rng.getrandbits(63)

    def nth(self, kind: str) -> int:
        """How many of ``kind`` were made before this one (0 for the first)."""
        n = self._made.get(kind, 0)
        self._made[kind] = n + 1
        return n


def conversations(
    rng: Random, starts: Iterator[float], turns_mean: float, think_s: float
) -> Iterator[tuple[float, int, int, bool]]:
    """Many overlapping conversations (an app's customers).

    Yields (ts, conversation, turn, last): ``last`` tells the caller it may forget the
    conversation. A heap holds the next turn of each open conversation only: memory is the
    number of conversations open at once, not their total.
    """
    heap: list[tuple[float, int, int]] = []
    p_stop = 1.0 / max(1.0, turns_mean)

    def turn_of(item: tuple[float, int, int]) -> Iterator[tuple[float, int, int, bool]]:
        t, c, turn = item
        last = rng.random() < p_stop
        yield t, c, turn, last
        if not last:
            heapq.heappush(heap, (t + think_s * rng.lognormvariate(0, 0.6), c, turn + 1))

    for conv, t0 in enumerate(starts):
        while heap and heap[0][0] <= t0:
            yield from turn_of(heapq.heappop(heap))
        heapq.heappush(heap, (t0, conv, 0))
    while heap:
        yield from turn_of(heapq.heappop(heap))


def chat_answer(env: Env, rng: Random, prompt: str, max_tokens: int | None) -> str:
    cap = 4 * (max_tokens or 1200)
    return env.sources.answer(rng, prompt, min(cap, int(rng.lognormvariate(7.0, 0.6))))


def _person_model(rng: Random, env: Env, ts: float, adopt_delay: float) -> str:
    if ts >= env.new_model_ts + adopt_delay:
        return "atlas-2"
    return "atlas-1-mini" if rng.random() < 0.3 else "atlas-1"


# --------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------


def household(mk: Maker, heavy: bool) -> list[Actor]:
    """Two people under one roof: one card, one home address (and their phones)."""
    rng = mk.rng
    tz, country = mk.zone()
    card = payment_fingerprint(rng)
    home = Egress(
        fixed=(ip_in(rng.choice(RESIDENTIAL[country]), rng),), rotate="mobile", fixed_share=0.75
    )
    return [
        *person(mk, heavy, (tz, country, home, card)),
        *person(mk, False, (tz, country, home, card)),
    ]


def person(
    mk: Maker, heavy: bool, home: tuple[float, str, Egress, str] | None = None
) -> list[Actor]:
    """One person with an account of their own: chat sessions on their local day."""
    rng = mk.rng
    tz, country = mk.zone() if home is None else home[:2]
    per_day = rng.lognormvariate(1.8, 0.5) if heavy else rng.lognormvariate(-0.7, 0.9)
    turns = rng.uniform(4, 9) if heavy else rng.uniform(1.5, 3.5)
    streams = rng.random() < 0.7
    adopt = rng.expovariate(1 / (2 * DAY)) if heavy else rng.expovariate(1 / (6 * DAY))
    temp = rng.choice((None, None, 0.6, 0.7, 1.0))
    coder = heavy and rng.random() < 0.5

    def program(r: Random, env: Env) -> Iterator[Call]:
        msgs: list[dict[str, Any]] = []
        for ts, turn in sessions(r, env.start, env.end, per_day, tz, "person", turns, 55.0):
            if turn == 0 or not msgs:
                msgs = []
                if coder and r.random() < 0.4:
                    lang, code = texts.code_snippet(r)
                    user = f"{r.choice(texts.CODE_TASKS)}\n\n```{lang}\n{code}```"
                elif heavy and r.random() < 0.25:
                    user = texts.capability_prompt(r)
                else:
                    user = r.choice(env.sources.chat_prompts)
            else:
                user = r.choice(FOLLOW_UPS)
            msgs = [*msgs[-6:], user_msg(user)]
            max_tokens = r.choice((None, None, 1024, 2048))
            req = chat_request(
                _person_model(r, env, ts, adopt),
                list(msgs),
                temperature=temp,
                max_tokens=max_tokens,
                stream=streams or None,
            )
            text = chat_answer(env, r, user, max_tokens)
            msgs.append({"role": "assistant", "content": clip(text, 600)})
            yield reply(ts, req, text)

    if home is None:
        egress = Egress(rotate="mobile" if rng.random() < 0.25 else "home", country=country)
        if heavy and rng.random() < 0.15:  # scripts on the person's own VPS, chat from home
            vps = f"{vps_block(rng, rng.choice(tuple(VPS_HOSTS)))}.{rng.randrange(2, 250)}"
            egress = Egress(fixed=(vps,), rotate="home", country=country, fixed_share=0.5)
        card = payment_fingerprint(rng) if rng.random() < 0.8 else None
    else:
        egress, card = home[2], home[3]
    # 15 % signed up recently, some during the period: young and honest
    created = mk.young(20, 0.3) if rng.random() < 0.15 else mk.created(900, 20)
    return [
        Actor(
            account_id=mk.account_id(),
            org_id=None,
            created_ts=created,
            verification=rng.choice(("none", "email", "email")),
            declared_use=rng.choice(
                (
                    None,
                    "personal use",
                    "personal assistant",
                    "learning",
                    "research",
                    "chatbot for my website",
                    "content generation",
                )
            ),
            persona="person-heavy" if heavy else "person-casual",
            label="honest",
            campaign_id=None,
            keys=mk.keys(1),
            egress=egress,
            user_agents=(person_ua(rng),),
            payment=card,
            program=program,
        )
    ]


def course_cohort(mk: Maker, size: int) -> list[Actor]:
    """A university course: accounts made in one afternoon, one NAT, one card, one notebook
    client, a shared assignment template run together during the weekly lab."""
    rng = mk.rng
    org = mk.org_id()
    card = payment_fingerprint(rng)
    nat = tuple(f"{UNIVERSITY_NAT}.{rng.randrange(2, 30)}" for _ in range(4))
    ua = ua_python(rng.choice(("1.54.3", "1.61.0")))
    tz, country = rng.choice(((-8.0, "us"), (1.0, "de"), (-5.0, "us")))
    made = mk.created(40, 5)
    lab_day = rng.choice((1, 3))  # days after Monday
    lab_hour = rng.choice((10, 14, 16))
    assignment = rng.choice(("review", "ticket"))
    out = []
    for _ in range(size):
        per_day = rng.lognormvariate(0.5, 0.6)

        def program(r: Random, env: Env, per_day: float = per_day) -> Iterator[Call]:
            homework = sessions(r, env.start, env.end, per_day, tz, "student", 3.0, 70.0)
            labs = _weekly(r, env, tz, lab_day, lab_hour)
            for ts, kind in heapq.merge(((t, 0) for t, _ in homework), ((t, 1) for t in labs)):
                if kind == 1:  # the assignment: label records with the course's template
                    rec, truth = texts.etl_record(r, assignment)
                    req = chat_request(
                        "atlas-1-mini",
                        [
                            system_msg("Label the record. Reply with JSON."),
                            user_msg(rec),
                        ],
                        temperature=0,
                        response_format={"type": "json_object"},
                    )
                    yield reply(ts, req, orjson.dumps(truth).decode())
                    continue
                if r.random() < 0.5:
                    q, a = texts.school_exercise(r)
                    text = a + " " + chat_answer(env, r, q, 400)
                else:
                    q = r.choice(env.sources.chat_prompts)
                    text = chat_answer(env, r, q, None)
                yield reply(ts, chat_request("atlas-1", [user_msg(q)]), text)

        out.append(
            Actor(
                account_id=mk.account_id(),
                org_id=org,
                created_ts=made + rng.uniform(0, 3 * HOUR),
                verification="org",
                declared_use="university coursework",
                persona="course-cohort",
                label="honest",
                campaign_id=None,
                keys=mk.keys(1),
                egress=Egress(fixed=nat, rotate="home", country=country, fixed_share=0.65),
                user_agents=(ua,),
                payment=card,
                program=program,
            )
        )
    return out


def _weekly(r: Random, env: Env, tz: float, weekday: int, hour: int) -> Iterator[float]:
    """A lab session: about 25 requests in the first 90 minutes of a weekly slot."""
    # Monday 00:00 local of the week containing start (1970-01-05 was a Monday).
    week0 = ((env.start + tz * HOUR - 4 * DAY) // (7 * DAY)) * 7 * DAY + 4 * DAY - tz * HOUR
    w = 0
    while True:
        t0 = week0 + w * 7 * DAY + weekday * DAY + hour * HOUR
        w += 1
        if t0 >= env.end:
            return
        if t0 + 2 * HOUR < env.start or r.random() < 0.15:  # absent this week
            continue
        t = t0 + r.uniform(0, 900)
        for _ in range(r.randint(10, 40)):
            t += r.expovariate(1 / 150.0)
            if t >= env.start:
                yield t
