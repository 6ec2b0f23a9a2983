"""Who sends traffic: honest people and applications, and distillation campaigns.

An *actor* owns one or more accounts and plans when each of its requests arrives (``plan``:
sorted times and the account of each) and what each request says (``exchange``). Honest
actors: casual users, power users (developers with a few own frames, sometimes temperature 0),
and legitimate templated applications (a support bot, a summarization pipeline) that are
high-volume and templated but serve people. Campaign actors: a single account, a hydra of many
low-volume linked accounts firing in synchronized waves, low-and-slow, a campaign hiding
behind cover traffic, and one that paraphrases its frame per request.

Timing is human (sessions, a diurnal rhythm in the account's time zone, bursts) or machine
(regular periods, round-the-clock, synchronized across accounts).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.sim import prompts as P
from distillguard.sim.prompts import PromptSets

DAY = 86_400.0
# Relative request rate per local hour of day for people (night trough, day plateau).
DIURNAL = np.array(
    [
        0.15,
        0.1,
        0.07,
        0.05,
        0.05,
        0.08,
        0.2,
        0.45,
        0.8,
        1,
        1,
        0.95,
        0.9,
        0.95,
        1,
        1,
        0.95,
        0.9,
        0.85,
        0.9,
        0.95,
        0.85,
        0.6,
        0.3,
    ]
)
DIURNAL_P = DIURNAL / DIURNAL.sum()
MODEL = "distillguard-small"
COMMON_UAS = (
    "openai-python/1.54.3",
    "OpenAI/Python 1.40.0",
    "OpenAI/JS 4.67.1",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/17.5",
)
RARE_UAS = ("aiohttp/3.9.{k}", "python-httpx/0.27.{k}", "Go-http-client/1.1", "node-fetch/2.{k}")


@dataclass
class SimAccount:
    """Simulator-side account: what the traffic shows plus the ground truth (labels only)."""

    account_id: str
    key_id: str
    persona: str
    label: str  # honest | campaign
    campaign_id: str | None
    payment: str | None
    ips: list[str]
    user_agent: str


@dataclass
class Network:
    """Shared address space: carrier NAT and cloud /24 prefixes that unrelated accounts share."""

    rng: random.Random
    carrier_prefixes: list[str] = field(default_factory=list)
    cloud_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        r = self.rng
        self.carrier_prefixes = [f"100.{r.randint(64, 127)}.{r.randint(0, 255)}" for _ in range(40)]
        self.cloud_prefixes = [
            f"{r.choice((3, 18, 34, 52))}.{r.randint(0, 255)}.{r.randint(0, 255)}"
            for _ in range(400)
        ]

    def residential(self) -> str:
        r = self.rng
        if r.random() < 0.08:  # behind a carrier NAT shared with strangers
            return f"{r.choice(self.carrier_prefixes)}.{r.randint(1, 254)}"
        return f"{r.randint(24, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def cloud(self, prefix: str | None = None) -> str:
        return f"{prefix or self.rng.choice(self.cloud_prefixes)}.{self.rng.randint(1, 254)}"


def _hex(r: random.Random, n: int = 12) -> str:
    return f"{r.getrandbits(4 * n):0{n}x}"


def new_account(
    r: random.Random,
    persona: str,
    label: str,
    campaign_id: str | None,
    *,
    payment: str | None,
    ips: list[str],
    user_agent: str,
) -> SimAccount:
    return SimAccount(
        f"acct-{_hex(r)}", f"key-{_hex(r)}", persona, label, campaign_id, payment, ips, user_agent
    )


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def diurnal_times(g: np.random.Generator, n: int, start: float, days: int, tz_h: int) -> np.ndarray:
    """``n`` arrivals of a Poisson process whose rate follows people's day (local ``tz_h``)."""
    day = g.integers(0, days, n)
    hour = g.choice(24, n, p=DIURNAL_P)
    t = start + day * DAY + ((hour - tz_h) % 24) * 3600.0 + g.random(n) * 3600.0
    return np.sort(t)


def session_times(
    g: np.random.Generator, n: int, start: float, days: int, tz_h: int, mean_session: float
) -> np.ndarray:
    """People: sessions start on the diurnal curve; inside one, think-and-read gaps."""
    n_sessions = max(1, math.ceil(n / mean_session))
    starts = diurnal_times(g, n_sessions, start, days, tz_h)
    sizes = np.bincount(g.integers(0, n_sessions, n), minlength=n_sessions)
    out = []
    for s, k in zip(starts, sizes, strict=True):
        if k:
            gaps = g.lognormal(math.log(50.0), 0.9, k)  # median 50 s, heavy tail
            gaps[0] = 0.0
            out.append(s + np.cumsum(gaps))
    return np.sort(np.concatenate(out)) if out else np.empty(0)


def regular_times(
    g: np.random.Generator, n: int, start: float, period: float, jitter: float
) -> np.ndarray:
    """A script: one request every ``period`` seconds with relative ``jitter``."""
    gaps = period * np.clip(1.0 + jitter * g.standard_normal(n), 0.05, None)
    return start + g.random() * period + np.cumsum(gaps)


def uniform_times(g: np.random.Generator, n: int, start: float, days: int) -> np.ndarray:
    """Round-the-clock Poisson arrivals (no day/night rhythm)."""
    return np.sort(start + g.random(n) * days * DAY)


def merge_account_times(times: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One time-ordered plan from each account's arrival times: (ts, owning account index)."""
    t = np.concatenate(times)
    owners = np.concatenate([np.full(len(x), i, dtype=np.int32) for i, x in enumerate(times)])
    order = np.argsort(t, kind="stable")
    return t[order], owners[order]


def batch_job_times(
    g: np.random.Generator, n: int, start: float, days: int, tz_h: int
) -> np.ndarray:
    """A pipeline: jobs triggered during business hours, each a run of back-to-back calls."""
    jobs = max(1, n // 40)
    starts = diurnal_times(g, jobs, start, days, tz_h)
    sizes = np.bincount(g.integers(0, jobs, n), minlength=jobs)
    out = [s + np.cumsum(g.gamma(8.0, 0.4, k)) for s, k in zip(starts, sizes, strict=True) if k]
    return np.sort(np.concatenate(out))


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


class Actor:
    """One honest person/app or one campaign: its accounts, arrival plan and request maker."""

    persona = "actor"
    label = "honest"

    def __init__(
        self,
        r: random.Random,
        sets: PromptSets,
        net: Network,
        start: float,
        days: int,
        campaign_id: str | None = None,
    ) -> None:
        self.r = r
        self.g = np.random.default_rng(r.getrandbits(64))
        self.sets = sets
        self.net = net
        self.start = start
        self.days = days
        self.campaign_id = campaign_id
        self.tz = r.randint(-8, 9)
        self.accounts: list[SimAccount] = []

    def account(self, *, payment: str | None, ips: list[str], ua: str) -> SimAccount:
        a = new_account(
            self.r,
            self.persona,
            self.label,
            self.campaign_id,
            payment=payment,
            ips=ips,
            user_agent=ua,
        )
        self.accounts.append(a)
        return a

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """Arrival times (sorted, float64) and the index of the account sending each."""
        raise NotImplementedError

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        """The request body for one arrival and the (real) answer the API gives."""
        raise NotImplementedError

    def answer(self, payload: str) -> str:
        return self.sets.answers.get(payload) or self.r.choice(self.sets.fallback_answers)

    def payment(self, p_none: float = 0.2) -> str | None:
        return None if self.r.random() < p_none else f"pm_{_hex(self.r, 16)}"


def _chat(messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    body.update({k: v for k, v in params.items() if v is not None})
    return body


class Casual(Actor):
    persona = "casual"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.n = 1 if r.random() < 0.05 else max(2, min(150, int(r.expovariate(1 / 20))))
        self.temperature = r.choice((None, None, None, 0.7, 1.0))
        self.stream = r.random() < 0.6
        ips = [self.net.residential() for _ in range(r.randint(1, 2))]
        self.account(payment=self.payment(0.25), ips=ips, ua=r.choice(COMMON_UAS))

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = session_times(self.g, self.n, self.start, self.days, self.tz, 3.0)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        p = self.r.choice(self.sets.honest)
        msgs = [{"role": "user", "content": p}]
        return _chat(msgs, temperature=self.temperature, stream=self.stream or None), self.answer(p)


class PowerUser(Actor):
    persona = "power_user"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.n = r.randint(150, 1200)
        self.greedy = r.random() < 0.3  # developers often pin temperature 0
        self.frame_share = r.uniform(0.0, 0.4)
        self.frames = r.sample(P.POWER_FRAMES, 3)
        self.system = r.choice((None, None, "You are a helpful assistant."))
        self.completions = r.random() < 0.15
        ips = [self.net.residential() for _ in range(r.randint(1, 4))]
        self.account(payment=self.payment(0.05), ips=ips, ua=r.choice(COMMON_UAS))

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = session_times(self.g, self.n, self.start, self.days, self.tz, 8.0)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        r = self.r
        p = r.choice(self.sets.honest)
        text = r.choice(self.frames).format(x=p) if r.random() < self.frame_share else p
        if r.random() < 0.06:
            text += P.HONEST_STEP_SUFFIX
        params = {
            "temperature": 0 if self.greedy else r.choice((None, 0.7)),
            "n": 2 if r.random() < 0.02 else None,
            "max_tokens": r.choice((None, 256, 512)),
        }
        if self.completions and r.random() < 0.5:
            body = {"model": MODEL, "prompt": text, **{k: v for k, v in params.items() if v}}
            return body, self.answer(p)
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": text}
        ]
        return _chat(msgs, **params), self.answer(p)


class SupportBot(Actor):
    """Legitimate app: one account, product system prompt, customers' varied messages."""

    persona = "app_support_bot"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.n = r.randint(1500, 6000)
        company = r.choice(P.COMPANIES)
        self.system = r.choice(P.frames_for(P.SUPPORT_SYSTEMS, self.sets.split)).format(
            company=company, product=r.choice(P.PRODUCTS)
        )
        self.user = r.choice(P.SUPPORT_USER)
        self.temperature = 0 if r.random() < 0.4 else 0.3
        ua = r.choice(
            (f"{company.split()[0]}Support-{_hex(r, 4)}/2.{r.randint(0, 9)}", COMMON_UAS[0])
        )
        ips = [self.net.cloud() for _ in range(r.randint(1, 2))]
        self.account(payment=self.payment(0.0), ips=ips, ua=ua)

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = diurnal_times(self.g, self.n, self.start, self.days, self.tz)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        p = self.r.choice(self.sets.honest)
        msgs = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(x=p)},
        ]
        body = _chat(msgs, temperature=self.temperature, max_tokens=300, stream=True)
        return body, self.answer(p)


class Summarizer(Actor):
    """Legitimate app: a pipeline summarizing user-written tickets in business-hour jobs."""

    persona = "app_summarizer"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.n = r.randint(1500, 6000)
        self.frame = r.choice(P.frames_for(P.SUMMARY_FRAMES, self.sets.split))
        self.team = r.choice(P.TEAMS)
        self.temperature = 0 if r.random() < 0.6 else 0.2
        ips = [self.net.cloud()]
        self.account(payment=self.payment(0.0), ips=ips, ua=r.choice(COMMON_UAS[:4]))

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = batch_job_times(self.g, self.n, self.start, self.days, self.tz)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        r = self.r
        doc = r.choice(self.sets.honest)
        if r.random() < 0.4:
            doc += "\n" + r.choice(self.sets.honest)
        text = self.frame.format(x=doc, team=self.team)
        body = _chat(
            [{"role": "user", "content": text}], temperature=self.temperature, max_tokens=120
        )
        ans = self.answer(doc)
        return body, ans.split("\n")[0][:300]


class CampaignBase(Actor):
    """Shared payload logic: GSM8K in a chain-of-thought frame, or T0 with a harvest system."""

    label = "campaign"

    def setup_payload(self) -> None:
        r = self.r
        self.use_t0 = r.random() < 0.25
        self.frame = r.choice(P.frames_for(P.COT_FRAMES, self.sets.split))
        self.system = r.choice(P.HARVEST_SYSTEMS)
        self.temperature = 0 if r.random() < 0.75 else None
        self.logprobs = r.random() < 0.35
        self.n_samples = 4 if r.random() < 0.15 else None

    def payload(self) -> tuple[list[dict[str, str]], str]:
        r = self.r
        if self.use_t0:
            p = r.choice(self.sets.t0)
            return [{"role": "system", "content": self.system}, {"role": "user", "content": p}], p
        q = r.choice(self.sets.gsm8k)
        return [{"role": "user", "content": self.frame.format(x=q)}], q

    def harvest_body(self, msgs: list[dict[str, str]]) -> dict[str, Any]:
        return _chat(
            msgs,
            temperature=self.temperature,
            max_tokens=1024,
            n=self.n_samples,
            logprobs=True if self.logprobs else None,
            top_logprobs=5 if self.logprobs else None,
        )

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        msgs, p = self.payload()
        return self.harvest_body(msgs), self.answer(p)


class CampaignSingle(CampaignBase):
    persona = "campaign_single"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.setup_payload()
        self.n = r.randint(1500, 5000)
        self.period = r.uniform(20, 120)
        self.jitter = r.uniform(0.05, 0.5)
        ua = r.choice(COMMON_UAS[:4] + tuple(u.format(k=r.randint(0, 9)) for u in RARE_UAS))
        self.account(payment=self.payment(0.1), ips=[self.net.cloud()], ua=ua)

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = regular_times(self.g, self.n, self.start, self.period, self.jitter)
        return t, np.zeros(len(t), dtype=np.int32)


class Hydra(CampaignBase):
    """Many low-volume accounts sharing cards, proxies and a frame, firing in waves."""

    persona = "campaign_hydra"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.setup_payload()
        k = r.randint(15, 50)
        cards = [f"pm_{_hex(r, 16)}" for _ in range(r.randint(2, 4))]
        prefixes = r.sample(self.net.cloud_prefixes, r.randint(1, 3))
        ua = (
            r.choice(RARE_UAS).format(k=r.randint(0, 9))
            if r.random() < 0.6
            else r.choice(COMMON_UAS[:4])
        )
        for _ in range(k):
            pay = None if r.random() < 0.15 else r.choice(cards)
            self.account(payment=pay, ips=[self.net.cloud(r.choice(prefixes))], ua=ua)
        self.per_account = [r.randint(40, 200) for _ in range(k)]
        self.period = r.uniform(300, 1200)

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        g, k = self.g, len(self.accounts)
        total = sum(self.per_account)
        per_wave = max(2, k // 3)
        waves = regular_times(g, math.ceil(total / per_wave), self.start, self.period, 0.05)
        owners = np.repeat(np.arange(k), self.per_account)
        g.shuffle(owners)
        wave_of = np.arange(total) // per_wave
        t = waves[wave_of] + g.random(total) * 3.0
        order = np.argsort(t, kind="stable")
        return t[order], owners[order].astype(np.int32)


class LowSlow(CampaignBase):
    persona = "campaign_low_slow"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.setup_payload()
        self.use_t0 = False
        self.temperature = 0 if r.random() < 0.5 else None
        pay = self.payment(0.2)
        for _ in range(r.randint(1, 2)):
            self.account(payment=pay, ips=[self.net.residential()], ua=r.choice(COMMON_UAS))
        self.per_account = [r.randint(120, 400) for _ in self.accounts]

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        return merge_account_times(
            [uniform_times(self.g, n, self.start, self.days) for n in self.per_account]
        )


class Cover(CampaignBase):
    """Half the requests are ordinary people's prompts sent as cover, with default params."""

    persona = "campaign_cover"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.setup_payload()
        self.n = r.randint(800, 2500)
        self.cover_share = r.uniform(0.3, 0.6)
        self.account(
            payment=self.payment(0.1), ips=[self.net.residential()], ua=r.choice(COMMON_UAS)
        )

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = regular_times(self.g, self.n, self.start, self.r.uniform(60, 240), 0.6)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        if self.r.random() < self.cover_share:
            p = self.r.choice(self.sets.honest)
            return _chat([{"role": "user", "content": p}], stream=True), self.answer(p)
        return super().request(acct)


class Paraphrase(CampaignBase):
    """Rewrites its frame on every request from a bank of openers and asks; normal params."""

    persona = "campaign_paraphrase"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.setup_payload()
        pay = self.payment(0.0)
        for _ in range(r.randint(1, 3)):
            self.account(payment=pay, ips=[self.net.residential()], ua=r.choice(COMMON_UAS))
        self.per_account = [r.randint(800, 2500) for _ in self.accounts]

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        return merge_account_times(
            [uniform_times(self.g, n, self.start, self.days) for n in self.per_account]
        )

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        r = self.r
        q = r.choice(self.sets.gsm8k)
        ask = r.choice(P.PARAPHRASE_ASKS) + r.choice((".", ":", "?", "!", ""))
        opener = r.choice(P.PARAPHRASE_OPENERS)
        parts = [opener, ask, q] if r.random() < 0.5 else [opener, q, ask]
        text = r.choice((" ", "\n", "\n\n")).join(x for x in parts if x)
        if r.random() < 0.3:
            text = text.lower()
        body = _chat(
            [{"role": "user", "content": text}], temperature=0.7, stream=r.random() < 0.5 or None
        )
        return body, self.answer(q)


class Mimic(CampaignBase):
    """Stress case, off by default: a campaign that copies a person. Sessions on a diurnal
    rhythm, no chain-of-thought frames, default sampling parameters, ordinary prompts mixed
    in, a residential address and a common SDK agent. What it keeps of a campaign is its
    payload: a sweep of GSM8K questions."""

    persona = "campaign_mimic"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        r = self.r
        self.n = r.randint(300, 1200)
        self.account(
            payment=self.payment(0.05), ips=[self.net.residential()], ua=r.choice(COMMON_UAS)
        )

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        t = session_times(self.g, self.n, self.start, self.days, self.tz, 8.0)
        return t, np.zeros(len(t), dtype=np.int32)

    def request(self, acct: int) -> tuple[dict[str, Any], str]:
        r = self.r
        if r.random() < 0.3:
            p = r.choice(self.sets.honest)
            return _chat([{"role": "user", "content": p}], stream=True), self.answer(p)
        q = r.choice(self.sets.gsm8k)
        return _chat(
            [{"role": "user", "content": q}], stream=r.random() < 0.5 or None
        ), self.answer(q)


HONEST_ACTORS: dict[str, type[Actor]] = {
    "casual": Casual,
    "power_user": PowerUser,
    "app_support_bot": SupportBot,
    "app_summarizer": Summarizer,
}
CAMPAIGN_ACTORS: dict[str, type[Actor]] = {
    "campaign_single": CampaignSingle,
    "campaign_hydra": Hydra,
    "campaign_low_slow": LowSlow,
    "campaign_cover": Cover,
    "campaign_paraphrase": Paraphrase,
}
