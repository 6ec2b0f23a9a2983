"""The console's cluster page, extending an action and the forensic reports list, over HTTP
against real gateways; ``actions extend`` through the admin API and the CLI."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.gateway.console.session import COOKIE_NAME
from distillguard.monitor.links import cluster_id_of


def sign_in(base_url: str, token: str) -> dict[str, str]:
    response = httpx.post(f"{base_url}/console/login", data={"token": token})
    assert response.status_code == 303, response.text
    return {COOKIE_NAME: response.cookies[COOKIE_NAME]}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _ask(gateway, secret: str) -> str:
    client = openai.OpenAI(base_url=gateway.api_url, api_key=secret, max_retries=0)
    answer = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "hello"}]
    )
    return answer.choices[0].message.content or ""


@pytest.fixture
def ring(gateway_server):
    """Three accounts whose traffic comes from one /24 (loopback) and that were created the
    same day: two kinds of key, one cluster for the monitor's rule."""
    gateway = gateway_server(online_monitor="false")
    members = [gateway.create_key(f"ring-{i}") for i in range(3)]
    for _, _, secret in members:
        assert _ask(gateway, secret)
    return gateway, members


def test_cluster_page_its_errors_and_its_csrf(ring):
    gateway, members = ring
    base, token = gateway
    cookies = sign_in(base, token)
    cid = cluster_id_of([m[0] for m in members])
    page = httpx.get(f"{base}/console/clusters/{cid}", cookies=cookies)
    assert page.status_code == 200, page.text
    for account_id, _, _ in members:
        assert f"/console/accounts/{account_id}" in page.text
    strokes = re.findall(r'class="link (\w+)"', page.text)
    assert strokes.count("ip_prefix") == 3 and strokes.count("created") == 3  # 3 pairs
    assert "shared IP prefix" in page.text and "creation burst" in page.text
    assert re.search(r'id="p-value">p = [0-9.e+-]+ that chance', page.text)
    # The overview and every member's page link to it.
    assert f"/console/clusters/{cid}" in httpx.get(f"{base}/console", cookies=cookies).text
    account = httpx.get(f"{base}/console/accounts/{members[0][0]}", cookies=cookies)
    assert f'href="/console/clusters/{cid}" id="cluster-link"' in account.text
    # Unknown or malformed ids: a 404 page with a sentence.
    for bad in ("cluster-000000000000", "nope", "<script>"):
        missing = httpx.get(f"{base}/console/clusters/{bad}", cookies=cookies)
        assert missing.status_code == 404 and "Unknown cluster" in missing.text
        assert "<script>" not in missing.text and "Traceback" not in missing.text
    csrf = csrf_of(page.text)
    forged = httpx.post(
        f"{base}/console/clusters/{cid}/actions", data={"csrf": "x", "reason": "r"}, cookies=cookies
    )
    no_reason = httpx.post(
        f"{base}/console/clusters/{cid}/actions",
        data={"csrf": csrf, "reason": " "},
        cookies=cookies,
    )
    assert forged.status_code == 403 and no_reason.status_code == 400
    assert "A reason is required" in no_reason.text
    for _, _, secret in members:  # neither changed anything
        assert _ask(gateway, secret)


def test_extend_through_the_console_and_the_admin_api(ring):
    gateway, members = ring
    base, token = gateway
    account_id, _, secret = members[0]
    admin = {"Authorization": f"Bearer {token}"}
    cookies = sign_in(base, token)
    csrf = csrf_of(httpx.get(f"{base}/console", cookies=cookies).text)
    applied = httpx.post(
        f"{base}/console/accounts/{account_id}/actions",
        data={"csrf": csrf, "reason": "campaign"},
        cookies=cookies,
    )
    assert applied.status_code == 303
    action = httpx.get(f"{base}/admin/actions", params={"account": account_id}, headers=admin)
    action_id = action.json()["data"][-1]["id"]
    old_expiry = action.json()["data"][-1]["expires_at"]

    # The console: a reason is needed, a lifetime outside the offered ones is refused.
    page = httpx.get(f"{base}/console/accounts/{account_id}", cookies=cookies).text
    assert f'id="extend-{action_id}"' in page
    bad = httpx.post(
        f"{base}/console/actions/{action_id}/extend",
        data={"csrf": csrf, "days": "90", "reason": ""},
        cookies=cookies,
    )
    assert bad.status_code == 400 and "A reason is required to extend" in bad.text
    extended = httpx.post(
        f"{base}/console/actions/{action_id}/extend",
        data={"csrf": csrf, "days": "90", "reason": "still active after a week"},
        cookies=cookies,
    )
    assert extended.status_code == 303 and "notice=extended" in extended.headers["location"]
    now = httpx.get(f"{base}/admin/actions", params={"account": account_id}, headers=admin)
    assert now.json()["data"][-1]["expires_at"] > old_expiry + 59 * 86_400
    with pytest.raises(openai.PermissionDeniedError):
        _ask(gateway, secret)

    # The admin API: 200, then 400 / 404 / 409 with OpenAI-shaped errors.
    url = f"{base}/admin/actions/{action_id}/extend"
    ok = httpx.post(url, json={"ttl_s": 3600, "reason": "one more hour"}, headers=admin)
    assert ok.status_code == 200 and ok.json()["expires_at"] < time.time() + 3601
    for body, status in (
        ({"ttl_s": 0, "reason": "r"}, 400),
        ({"ttl_s": -5, "reason": "r"}, 400),
        ({"ttl_s": 60, "reason": ""}, 400),
    ):
        response = httpx.post(url, json=body, headers=admin)
        assert response.status_code == status and "error" in response.json(), body
    unknown = httpx.post(
        f"{base}/admin/actions/999999/extend", json={"ttl_s": 60, "reason": "r"}, headers=admin
    )
    assert unknown.status_code == 404
    audit = httpx.get(f"{base}/admin/audit", params={"account": account_id}, headers=admin)
    events = [e for e in audit.json()["data"] if e["event"] == "action.extend"]
    assert [e["reason"] for e in events] == ["still active after a week", "one more hour"]
    lifted = httpx.post(
        f"{base}/admin/actions/{action_id}/lift", json={"reason": "done"}, headers=admin
    )
    assert lifted.status_code == 200
    again = httpx.post(url, json={"ttl_s": 60, "reason": "r"}, headers=admin)
    assert again.status_code == 409
    assert _ask(gateway, secret)


def test_extend_from_the_cli(db_url):
    runner = CliRunner()
    assert runner.invoke(app, ["accounts", "create", "cli-x", "--db", db_url]).exit_code == 0
    applied = runner.invoke(
        app, ["actions", "apply", "cli-x", "block", "--reason", "r", "--ttl", "60", "--db", db_url]
    )
    action_id = re.search(r"action (\d+): block", applied.output).group(1)
    out = runner.invoke(
        app,
        ["actions", "extend", action_id, "--ttl-s", "86400", "--reason", "why", "--db", db_url],
    )
    assert out.exit_code == 0, out.output
    assert f"extended action {action_id} (block on" in out.output
    bad = runner.invoke(
        app, ["actions", "extend", action_id, "--ttl-s", "0", "--reason", "why", "--db", db_url]
    )
    assert bad.exit_code != 0


def _write_reports(folder, key_dir):
    from distillguard.forensics.custody import generate_keypair, sign_document

    private, _ = generate_keypair(key_dir)
    folder.mkdir(parents=True)
    document = {"title": "Campaign <b>7</b>", "generated": "2026-12-01", "verdict": "positive"}
    signed = sign_document(document, private)
    (folder / "signed.json").write_text(json.dumps(signed))
    (folder / "signed.html").write_text("<html><body><h1>signed report</h1></body></html>")
    tampered = {**signed, "verdict": "negative"}
    (folder / "tampered.json").write_text(json.dumps(tampered))
    (folder / "unsigned.json").write_text(json.dumps(document))
    (folder / "broken.json").write_text("{not json")
    return private


def test_reports_list_checks_signatures_and_serves_behind_the_session(gateway_server, tmp_path):
    folder = tmp_path / "reports"
    private = _write_reports(folder, tmp_path / "keys")
    gateway = gateway_server(
        online_monitor="false", reports_dir=folder, evidence_signing_key_file=private
    )
    base, token = gateway
    assert httpx.get(f"{base}/console/reports/signed.html").status_code == 401
    cookies = sign_in(base, token)
    page = httpx.get(f"{base}/console/evidence", cookies=cookies)
    assert page.status_code == 200
    table = page.text[page.text.index('id="reports"') :]
    statuses = re.findall(r'class="tag sig-(\w+)"', table)
    assert sorted(statuses) == ["invalid", "signed", "unreadable", "unsigned"]
    assert "Campaign &lt;b&gt;7&lt;/b&gt;" in table  # escaped
    assert "valid, by the provider&#39;s key" in table
    assert "changed after it was signed" in table
    opened = httpx.get(f"{base}/console/reports/signed.html", cookies=cookies)
    assert opened.status_code == 200 and "signed report" in opened.text
    assert opened.headers["content-security-policy"].startswith("sandbox")
    for bad in ("..%2Fkeys%2Fevidence-signing.pub", "nothing.json", "signed.txt", ".hidden.json"):
        response = httpx.get(f"{base}/console/reports/{bad}", cookies=cookies)
        assert response.status_code == 404, bad
