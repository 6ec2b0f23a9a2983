"""The console over HTTP against a real gateway process: the session fence, CSRF, logins,
clear error pages, search. (The browser tests drive the same pages through Chromium.)"""

from __future__ import annotations

import re
import secrets

import httpx
import openai
import pytest

from distillguard.gateway.console.session import COOKIE_NAME, issue, verify

PAGES = [
    "/console",
    "/console/accounts/anything",
    "/console/evidence",
    "/console/search?q=a",
    "/console/static/console.css",
]


def sign_in(base_url: str, token: str) -> dict[str, str]:
    """The session cookie (sent by hand: httpx keeps Secure cookies off plain http)."""
    response = httpx.post(f"{base_url}/console/login", data={"token": token})
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console"):
        assert attribute.lower() in cookie.lower()
    return {COOKIE_NAME: response.cookies[COOKIE_NAME]}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, mock_upstream):
    """One real gateway for the module's tests that do not count failed logins (those
    share a per-IP budget, so that test starts its own)."""
    from distillguard.gateway.process import GatewayProcess

    server = GatewayProcess(
        home=tmp_path_factory.mktemp("console-gateway"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
    ).start()
    yield server
    server.stop()


def test_nothing_is_readable_without_a_session(gateway):
    base, token = gateway
    forged = issue("not-the-admin-token", 3600)[0]
    for cookies in ({}, {COOKIE_NAME: forged}, {COOKIE_NAME: "garbage"}):
        for page in PAGES:
            response = httpx.get(base + page, cookies=cookies)
            assert response.status_code == 401, (page, cookies)
            assert 'name="token"' in response.text  # the sign-in form, nothing else
            assert "Traceback" not in response.text
            assert "svg" not in response.text and "body {" not in response.text
    cookies = sign_in(base, token)
    for page in PAGES[:1] + PAGES[2:]:
        assert httpx.get(base + page, cookies=cookies).status_code == 200, page
    assert httpx.get(base + "/console/static/../app.py", cookies=cookies).status_code == 404
    csrf = csrf_of(httpx.get(f"{base}/console", cookies=cookies).text)
    out = httpx.post(f"{base}/console/logout", data={"csrf": csrf}, cookies=cookies)
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert (
        f"{COOKIE_NAME}=" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    )


def test_forged_csrf_is_refused_and_changes_nothing(gateway):
    base, token = gateway
    account_id, _, secret = gateway.create_key("csrf-victim")
    cookies = sign_in(base, token)
    page = httpx.get(f"{base}/console/accounts/{account_id}", cookies=cookies)
    assert page.status_code == 200
    good = csrf_of(page.text)
    for csrf in ("forged", "", good[:-1] + ("A" if good[-1] != "A" else "B")):
        response = httpx.post(
            f"{base}/console/accounts/{account_id}/actions",
            data={"csrf": csrf, "reason": "test"},
            cookies=cookies,
        )
        assert response.status_code == 403
        assert "security token does not match" in response.text
    # A CSRF token is bound to its session: another session's token does not pass either.
    other = csrf_of(httpx.get(f"{base}/console", cookies=sign_in(base, token)).text)
    assert other != good
    response = httpx.post(
        f"{base}/console/accounts/{account_id}/actions",
        data={"csrf": other, "reason": "test"},
        cookies=cookies,
    )
    assert response.status_code == 403
    client = openai.OpenAI(base_url=gateway.api_url, api_key=secret, max_retries=0)
    answer = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "still served?"}]
    )
    assert answer.choices[0].message.content


def test_clear_messages_for_bad_input(gateway):
    base, token = gateway
    account_id, key_id, _ = gateway.create_key("bad-input")
    cookies = sign_in(base, token)
    unknown = httpx.get(f"{base}/console/accounts/no-such-account", cookies=cookies)
    assert unknown.status_code == 404
    assert "No account has the id or name &#39;no-such-account&#39;" in unknown.text
    csrf = csrf_of(httpx.get(f"{base}/console", cookies=cookies).text)
    missing = httpx.post(
        f"{base}/console/accounts/{account_id}/actions",
        data={"csrf": csrf, "reason": "   "},
        cookies=cookies,
    )
    assert missing.status_code == 400
    assert "A reason is required" in missing.text
    bad_window = httpx.get(f"{base}/console?hours=5", cookies=cookies)
    assert bad_window.status_code == 400 and "the window must be one of" in bad_window.text
    empty = httpx.post(f"{base}/console/evidence", data={"csrf": csrf}, cookies=cookies)
    assert empty.status_code == 400 and "Paste the text to test." in empty.text
    for response in (unknown, missing, bad_window, empty):
        assert "Traceback" not in response.text
    # search: by name, by key id, by IP prefix (the gateway sees 127.0.0.1)
    by_name = httpx.get(f"{base}/console/search", params={"q": "bad-in"}, cookies=cookies)
    assert f"/console/accounts/{account_id}" in by_name.text
    by_key = httpx.get(f"{base}/console/search", params={"q": key_id}, cookies=cookies)
    assert f"owns key {key_id}" in by_key.text
    nothing = httpx.get(f"{base}/console/search", params={"q": "zz<b>"}, cookies=cookies)
    assert "Nothing matches zz&lt;b&gt;." in nothing.text


REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")


def test_failed_sign_ins_share_one_budget_across_replicas(gateway_server):
    """Failures on one replica count on the other (Redis), and /console and /admin share the
    admin credential's budget: a guesser gets one budget, not one per door and process."""
    _redis_or_skip()
    rng = secrets.SystemRandom()  # an address no earlier run used (the window is shared)
    ip = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"
    settings = {
        "online_monitor": "false",
        "redis_url": REDIS_URL,
        "admin_login_max_failures": 3,
        "admin_login_window_s": 600,
    }
    first, second = gateway_server(**settings), gateway_server(**settings)
    transport = httpx.HTTPTransport(local_address=ip)
    with httpx.Client(transport=transport) as client:
        for gw in (first, second):
            response = client.post(f"{gw.base_url}/console/login", data={"token": "wrong"})
            assert response.status_code == 401 and "Wrong admin token." in response.text
        admin = client.get(
            f"{first.base_url}/admin/accounts", headers={"Authorization": "Bearer guess"}
        )
        assert admin.status_code == 403  # the third failure, through the admin API
        for gw in (first, second):
            blocked = client.post(f"{gw.base_url}/console/login", data={"token": gw.admin_token})
            assert blocked.status_code == 429, gw.base_url
            assert int(blocked.headers["retry-after"]) > 0
            assert "Too many failed sign-ins" in blocked.text
    # Another address is not affected.
    assert (
        httpx.post(f"{first.base_url}/console/login", data={"token": first.admin_token}).status_code
        == 303
    )


def test_session_cookie_expires_and_is_bound_to_the_admin_token():
    cookie, session = issue("admin-token", ttl_s=60, now=1000.0)
    assert verify("admin-token", cookie, now=1059.0) == session
    with pytest.raises(Exception, match="expired"):
        verify("admin-token", cookie, now=1060.0)
    with pytest.raises(Exception, match="not valid"):
        verify("another-token", cookie, now=1000.0)
    payload, _, signature = cookie.partition(".")
    with pytest.raises(Exception, match="not valid"):
        verify("admin-token", payload[:-2] + "AA." + signature, now=1000.0)
