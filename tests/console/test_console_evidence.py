"""The evidence page against a gateway serving the tiny model with the KGW watermark: a
pasted answer gets its p-value and the account whose per-account mark it carries."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from openai import OpenAI

from distillguard.gateway.console.session import COOKIE_NAME

pytestmark = pytest.mark.slow  # a real gateway serving a real (tiny) model


def test_pasted_answer_is_detected_and_attributed(gateway_server, tiny_model_dir):
    gateway = gateway_server(
        model_dir=tiny_model_dir, watermark="kgw", watermark_secret="console-evidence-secret"
    )
    base, token = gateway
    answers = {}
    for name in ("harvester", "bystander"):
        account_id, _, secret = gateway.create_key(name)
        client = OpenAI(base_url=gateway.api_url, api_key=secret, max_retries=0)
        model = client.models.list().data[0].id
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Tell me a long story, {name}."}],
            n=8,  # enough scored tokens for the per-account test to be decisive
            max_tokens=160,
            seed=5,
            temperature=1.0,
        )
        answers[account_id] = "\n".join(c.message.content or "" for c in out.choices)
    harvester = next(iter(answers))
    login = httpx.post(f"{base}/console/login", data={"token": token})
    cookies = {COOKIE_NAME: login.cookies[COOKIE_NAME]}
    form = httpx.get(f"{base}/console/evidence", cookies=cookies).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    marked = httpx.post(
        f"{base}/console/evidence",
        data={"csrf": csrf, "text": answers[harvester]},
        cookies=cookies,
        timeout=120,
    )
    assert marked.status_code == 200, marked.text
    assert "Watermarked: the p-value is under 0.001" in marked.text
    named = re.search(r'<ul id="named">(.*?)</ul>', marked.text, re.S)
    assert named, re.search(r'<section id="result">(.*?)</section>', marked.text, re.S).group(1)
    assert harvester in named.group(1)
    plain = "The committee met on Tuesday to discuss the budget for the coming year. " * 6
    unmarked = httpx.post(
        f"{base}/console/evidence", data={"csrf": csrf, "text": plain}, cookies=cookies
    )
    assert unmarked.status_code == 200
    assert "Not significant at 0.001" in unmarked.text
    assert html.escape(plain[:40]) in unmarked.text  # the pasted text stays in the form
