"""The graduated defences served through the gateway, with the official openai SDK.

Each action is applied through ``POST /admin/actions`` as an operator (or the policy) does,
the served answer is checked to change as the action says, the action is lifted, and service
is checked to be back to normal. Local mode serves a real tiny model with the KGW watermark
(log-probability controls, antidistillation, the watermark under every defence); upstream
mode proxies the mock upstream, whose answer quotes the prompt, so that an answer with
reasoning steps and a ``####`` final line can be served and its reasoning withheld or
perturbed.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from distillguard.config import Settings
from distillguard.gateway.app import create_app
from support.servers import ThreadedServer

ADMIN = "prevention-admin-token"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _eventually(check: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


class Admin:
    """The admin API of one gateway."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.headers = base_url, {"authorization": f"Bearer {token}"}

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.base_url}/admin{path}", json=body, headers=self.headers)

    def get(self, path: str) -> dict:
        return httpx.get(f"{self.base_url}/admin{path}", headers=self.headers).json()

    def new_key(self) -> tuple[str, str]:
        name = f"prevention-{secrets.token_hex(4)}"
        account = self.post("/accounts", {"name": name}).json()["id"]
        return account, self.post("/keys", {"account": account}).json()["secret"]

    def apply(self, account: str, action: str, params: dict | None = None) -> int:
        body = {"account": account, "action": action, "reason": "test", "ttl_s": 600}
        answer = self.post("/actions", {**body, "params": params or {}})
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def lift(self, action_id: int) -> None:
        answer = self.post(f"/actions/{action_id}/lift", {"reason": "test over"})
        assert answer.status_code == 200, answer.text

    def exchanges(self, account: str) -> list[dict]:
        return self.get(f"/exchanges?account={account}&limit=100")["data"]


# --- local mode: a real tiny model, watermarked ---------------------------------------------


@pytest.fixture(scope="module")
def local(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        home=tmp_path_factory.mktemp("prevention"),
        model_dir=tiny_model_dir,
        model_name="tiny",
        watermark_scheme="kgw",
        watermark_secret="prevention-test-watermark-secret-0123456789",
        admin_token=ADMIN,
        online_monitor=False,  # the actions come from the admin API here
        antidistill_window=16,
    )
    with ThreadedServer(create_app(settings)) as running:
        yield running


@pytest.fixture
def local_client(local: ThreadedServer) -> tuple[Admin, str, openai.OpenAI]:
    admin = Admin(local.base_url, ADMIN)
    account, secret = admin.new_key()
    client = openai.OpenAI(base_url=f"{local.base_url}/v1", api_key=secret, max_retries=0)
    return admin, account, client


def test_cap_logprobs_caps_rounds_refuses_and_lifts(local_client) -> None:
    admin, account, client = local_client
    ask = dict(model="tiny", messages=CHAT, max_tokens=8, seed=3, logprobs=True, top_logprobs=5)
    normal = client.chat.completions.create(**ask)
    assert all(len(t.top_logprobs) == 5 for t in normal.choices[0].logprobs.content)

    action = admin.apply(account, "cap_logprobs", {"top_logprobs": 2, "round_decimals": 1, "n": 2})
    capped = client.chat.completions.create(**ask)
    assert capped.choices[0].message.content == normal.choices[0].message.content
    for token in capped.choices[0].logprobs.content:
        assert len(token.top_logprobs) == 2  # asked 5: served the cap, not refused
        values = [token.logprob, *(t.logprob for t in token.top_logprobs)]
        assert all(v == round(v, 1) for v in values)
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(**{**ask, "n": 3})
    assert too_many.value.body["param"] == "n"
    rows = admin.exchanges(account)
    refused = [r for r in rows if r["status"] == 400]
    assert len(refused) == 1 and all(r["request"]["_defence"]["action"] for r in refused)
    served = [r for r in rows if r["status"] == 200 and "_defence" in r["request"]]
    assert served and served[0]["request"]["_defence"]["applied"] == ["cap_logprobs"]

    admin.lift(action)
    back = client.chat.completions.create(**ask)
    assert all(len(t.top_logprobs) == 5 for t in back.choices[0].logprobs.content)


def test_logprobs_with_logit_bias_refused_under_the_cap_upstream(upstream_gateway) -> None:
    # the logit-extraction pair; upstream mode, since the local model takes no logit_bias at all
    admin, account, client, gw = upstream_gateway
    ask = dict(model="mock-model", messages=CHAT, max_tokens=4, logprobs=True, top_logprobs=2)
    client.chat.completions.create(**ask, logit_bias={"50": 100})  # no action: served
    action = admin.apply(account, "cap_logprobs", {"top_logprobs": 2})
    with pytest.raises(openai.BadRequestError) as extraction:
        client.chat.completions.create(**ask, logit_bias={"50": 100})
    error = extraction.value.body
    assert error["param"] == "logit_bias" and "logit_bias" in error["message"]
    assert "score" not in error["message"].lower()  # says what to do, not why
    # logit_bias alone is still served: only the extraction pair is refused
    client.chat.completions.create(model="mock-model", messages=CHAT, logit_bias={"50": 1})
    refused = [r for r in gw.exchanges(account=account) if r["status"] == 400]
    assert len(refused) == 1 and refused[0]["request"]["_defence"]["action"] == "cap_logprobs"
    admin.lift(action)

    def served_again() -> bool:
        try:
            return bool(client.chat.completions.create(**ask, logit_bias={"50": 100}).choices)
        except openai.BadRequestError:
            return False  # the lift has not reached the gateway yet

    assert _eventually(served_again)


def test_logprob_budget_runs_out_for_the_day(local_client) -> None:
    admin, account, client = local_client
    admin.apply(account, "cap_logprobs", {"top_logprobs": 3, "budget": 10})
    ask = dict(model="tiny", messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3)
    served = 0
    for _ in range(4):
        answer = client.chat.completions.create(**ask)
        lp = answer.choices[0].logprobs
        served += 0 if lp is None else len(lp.content)
    assert served == 10  # 6 + 4, then nothing: the answers still come, without logprobs


def test_stream_under_logprob_controls(local_client) -> None:
    admin, account, client = local_client
    admin.apply(account, "cap_logprobs", {"top_logprobs": 1, "noise": 0.5, "round_decimals": 2})
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=8, logprobs=True, top_logprobs=4, stream=True
        )
    )
    entries = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert entries and all(len(t.top_logprobs) == 1 and t.logprob <= 0 for t in entries)
    assert all(t.logprob == round(t.logprob, 2) for t in entries)


def test_antidistill_changes_sampling_keeps_the_watermark_and_lifts(local, local_client) -> None:
    admin, account, client = local_client
    ask = dict(model="tiny", prompt="The weather today", max_tokens=40, seed=7, temperature=1.0)
    plain = client.completions.create(**ask).choices[0].text
    action = admin.apply(account, "antidistill", {"lambda": 4.0})
    steered = client.completions.create(**ask)
    assert steered.choices[0].text != plain  # same seed, a steered distribution
    with_lp = client.completions.create(**ask, logprobs=2)
    assert with_lp.choices[0].logprobs is None  # served without: they would leak the steering
    rows = [r for r in admin.exchanges(account) if "_defence" in r["request"]]
    assert rows[0]["request"]["_defence"]["applied"] == ["antidistill"]
    assert rows[0]["response_text"] == with_lp.choices[0].text or rows[-1]["response_text"]
    admin.lift(action)
    assert client.completions.create(**ask).choices[0].text == plain


def _detect(admin: Admin, texts: list[str], account: str) -> list[dict]:
    answer = admin.post("/watermark/detect", {"texts": texts, "accounts": [account]})
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


@pytest.mark.parametrize(
    ("action", "params"),
    [
        (None, {}),
        ("cap_logprobs", {"top_logprobs": 1}),
        ("withhold_reasoning", {"mode": "drop"}),
        ("perturb_reasoning", {}),
        ("antidistill", {"lambda": 1.0}),
    ],
)
def test_the_watermark_stays_on_under_every_defence(local_client, action, params) -> None:
    admin, account, client = local_client
    if action is not None:
        admin.apply(account, action, params)
    texts = [
        client.completions.create(
            model="tiny", prompt=f"Story number {i}:", max_tokens=200, seed=100 + i
        )
        .choices[0]
        .text
        for i in range(6)
    ]
    result = _detect(admin, [" ".join(texts)], account)[0]
    # The provider's watermark at FPR 1e-3 over ~1,200 tokens (the tiny model's answers vary
    # in length with the account's key; the per-account key is weaker at this length,
    # p ~ 1e-2 with or without a defence, so it is not asserted here).
    assert result["p_value"] < 1e-3, result


# --- upstream mode: the mock answers with the reasoning the prompt spells out --------------

STEPS = "12+3=15\n15*2=30\n#### 30"  # the mock answers "mock answer to: <prompt[:40]>"


@pytest.fixture
def upstream_gateway(gateway_server):
    gw = gateway_server(online_monitor="false")
    account, _, secret = gw.create_key()
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0)
    return Admin(gw.base_url, gw.admin_token), account, client, gw


def _answer(client: openai.OpenAI, content: str = STEPS, **kw) -> str:
    messages = [{"role": "user", "content": content}]
    return (
        client.chat.completions.create(model="mock-model", messages=messages, **kw)
        .choices[0]
        .message.content
    )


def test_withhold_drop_summary_perturb_and_lift_upstream(upstream_gateway, mock_upstream) -> None:
    admin, account, client, gw = upstream_gateway
    assert _answer(client) == f"mock answer to: {STEPS}"

    action = admin.apply(account, "withhold_reasoning", {"mode": "drop"})
    assert _answer(client) == "#### 30"
    streamed = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": STEPS}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "#### 30"
    admin.lift(action)

    action = admin.apply(account, "withhold_reasoning", {"mode": "summary"})
    summarized = _answer(client, "1+1=2\nSummary: add.\n#### 2")
    assert mock_upstream.requests[-1]["messages"][-1]["content"].endswith(
        "Summarize your steps."
    )  # the upstream was asked for its summary
    assert summarized.startswith("Summary: add.\n#### 2") and "1+1" not in summarized
    admin.lift(action)

    action = admin.apply(account, "perturb_reasoning", {"rate": 1.0, "max_offset": 2})
    perturbed = _answer(client)
    steps = re.findall(r"(\d+)([-+*])(\d+)=(\d+)", perturbed)
    assert len(steps) == 2 and perturbed.endswith("#### 30")
    # The default (carry) mode: a wrong intermediate result carried on, every line true
    # arithmetic, the chain landing back on the teacher's last value.
    assert steps[0][3] != "15" and steps[1][0] == steps[0][3] and steps[1][3] == "30"
    assert all(
        int(c)
        == (int(a) + int(b) if op == "+" else int(a) - int(b) if op == "-" else int(a) * int(b))
        for a, op, b, c in steps
    )
    assert _answer(client) == perturbed  # keyed: asking again does not reveal the right steps
    logged = next(r for r in gw.exchanges(account=account) if r["status"] == 200)
    assert logged["response_text"] == perturbed  # the log holds what was served
    assert logged["request"]["_defence"]["action"] == "perturb_reasoning"
    admin.lift(action)
    assert _eventually(lambda: _answer(client) == f"mock answer to: {STEPS}")


def test_antidistill_upstream_is_served_as_withheld_reasoning(upstream_gateway) -> None:
    admin, account, client, gw = upstream_gateway
    admin.apply(account, "antidistill", {"lambda": 2.0})
    assert _answer(client) == "#### 30"
    logged = next(r for r in gw.exchanges(account=account) if r["status"] == 200)
    assert "antidistill needs the local backend" in logged["request"]["_defence"]["applied"][0]


def test_bad_defence_settings_are_400_from_the_admin_api(upstream_gateway) -> None:
    admin, account, _, _ = upstream_gateway
    cases = [
        ("antidistill", {"lambda": -0.5}, "params.lambda"),
        ("cap_logprobs", {"top_logprobs": 21}, "params.top_logprobs"),
        ("perturb_reasoning", {"rate": 0}, "params.rate"),
        ("poison", {}, "action"),
    ]
    for action, params, where in cases:
        body = {"account": account, "action": action, "params": params, "reason": "x", "ttl_s": 60}
        answer = admin.post("/actions", body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == where


# --- the plan for each action, and antidistillation that cannot be built -----------------


def test_plans_for_each_action() -> None:
    from distillguard.gateway.prevention import plan_for

    assert plan_for("flag", {}, local=True) is None
    capped = plan_for("cap_logprobs", {"top_logprobs": 2, "n": 3}, local=True)
    assert capped.controls.top_logprobs == 2 and capped.controls.n_max == 3
    assert not capped.rewrites_text
    summary = plan_for("withhold_reasoning", {"mode": "summary"}, local=False)
    assert summary.withhold == "summary" and summary.controls.strip
    perturbed = plan_for("perturb_reasoning", {"rate": 0.5}, local=True)
    assert perturbed.perturb.rate == 0.5 and perturbed.rewrites_text
    local_ad = plan_for("antidistill", {"lambda": 2.0}, local=True)
    assert local_ad.antidistill.lam == 2.0 and local_ad.withhold is None
    upstream_ad = plan_for("antidistill", {"lambda": 2.0}, local=False)
    assert upstream_ad.antidistill is None and upstream_ad.withhold == "drop"


def test_unbuildable_antidistillation_is_served_withheld_not_500(tmp_path) -> None:
    import asyncio
    from types import SimpleNamespace

    from distillguard.gateway.prevention import _with_antidistill, plan_for

    settings = Settings(home=tmp_path, antidistill_heldout_path=tmp_path / "missing.jsonl")
    state = SimpleNamespace(
        settings=settings, prevention=None, backend=SimpleNamespace(engine=None)
    )
    job = SimpleNamespace(logits_hook=None)
    plan = plan_for("antidistill", {"lambda": 1.0}, local=True)
    served = asyncio.run(_with_antidistill(state, job, plan))
    assert served.withhold == "drop" and served.antidistill is None and job.logits_hook is None
    assert "antidistill unavailable: ConfigError" in served.applied[0]
