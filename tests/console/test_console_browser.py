"""The console in a real browser (Debian's Chromium through selenium): sign in, open each
page, see a hostile prompt as text, apply and lift a suspension and watch the account be
refused and served again through the ``openai`` SDK."""

from __future__ import annotations

import json
import time

import openai
import pytest

from distillguard.gateway.console.browser import (
    browser_available,
    chromium_driver,
    click_and_load,
    save_screenshots,
    sign_in,
    wait_for_clusters,
)
from distillguard.gateway.console.session import COOKIE_NAME, issue
from distillguard.monitor.links import cluster_id_of

pytestmark = pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))

HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'> hello"


@pytest.fixture
def driver():
    browser = chromium_driver()
    yield browser
    browser.quit()


def Select(element):
    from selenium.webdriver.support.select import Select as _Select

    return _Select(element)


def WebDriverWait(driver, timeout):
    from selenium.webdriver.support.wait import WebDriverWait as _Wait

    return _Wait(driver, timeout)


def ask(client: openai.OpenAI, content: str) -> str:
    answer = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": content}]
    )
    return answer.choices[0].message.content or ""


def test_console_in_chromium(gateway_server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    gateway = gateway_server()
    base, token = gateway
    account_id, key_id, secret = gateway.create_key("campaign-7")
    client = openai.OpenAI(base_url=gateway.api_url, api_key=secret, max_retries=0)
    assert ask(client, HOSTILE)
    assert ask(client, "explain step by step")

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    # Without a session: the sign-in form; a wrong token says so.
    driver.get(f"{base}/console/accounts/{account_id}")
    assert driver.find_elements(By.ID, "token") and "campaign-7" not in driver.page_source
    sign_in(driver, base, "wrong-token")
    assert text("error") == "Wrong admin token."
    sign_in(driver, base, token)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#traffic svg rect")) == 2 * 48
    assert "campaign-7" in text("top")

    # Account page: the hostile prompt is text, and nothing in it ran.
    driver.get(f"{base}/console/accounts/campaign-7")
    assert text("account-name") == "campaign-7"
    assert "[redacted:" in text("prompts") and "hello" not in text("prompts")
    click_and_load(driver, "show")
    assert "<script>window.__pwned = 1</script>" in text("prompts")
    assert driver.execute_script("return window.__pwned === undefined")
    assert not driver.find_elements(By.CSS_SELECTOR, "#prompts script, #prompts img")

    # Apply: a missing reason is a message; with a reason the account is refused.
    click_and_load(driver, "apply")
    assert "A reason is required" in text("error")
    assert ask(client, "still served before the action")
    driver.find_element(By.ID, "apply-reason").send_keys("extraction campaign <b>bold</b>")
    click_and_load(driver, "apply")
    assert text("notice") == "Action applied." and text("status") == "blocked"
    assert "extraction campaign <b>bold</b>" in text("actions")
    with pytest.raises(openai.PermissionDeniedError):
        ask(client, "refused now")

    # Lift: served again, and the audit trail shows both.
    driver.find_element(By.ID, "lift-reason").send_keys("false positive: research lab")
    click_and_load(driver, "lift")
    assert text("notice") == "Action lifted." and text("status") == "active"
    assert ask(client, "served again")
    actions = text("actions")
    assert "block" in actions and "lifted by console:" in actions and "research lab" in actions

    # Search (key id) and the overview's acted-on list.
    driver.get(f"{base}/console/search?q={key_id}")
    assert f"owns key {key_id}" in text("hits")
    driver.get(f"{base}/console")
    assert "block" in text("recent") and "lifted" in text("recent")

    # Evidence: a result or a clear message, never a stack trace.
    driver.get(f"{base}/console/evidence")
    driver.find_element(By.ID, "text").send_keys("some suspect output text to test")
    click_and_load(driver, "detect")
    shown = driver.find_elements(By.ID, "result") or driver.find_elements(By.ID, "error")
    assert shown and "Traceback" not in driver.page_source

    # The demo's screenshots: one full-page PNG per page, signed in by its own browser.
    shots = save_screenshots(base, token, tmp_path / "shots", account=account_id)
    assert [s.name for s in shots] == [
        "console-overview.png",
        "console-account.png",
        "console-search.png",
        "console-evidence.png",
    ]  # a lone account: no cluster page to shoot
    assert all(s.read_bytes().startswith(b"\x89PNG") for s in shots)


def _signed_report(folder, key_dir):
    from distillguard.forensics.custody import generate_keypair, sign_document

    private, _ = generate_keypair(key_dir)
    folder.mkdir(parents=True)
    signed = sign_document({"title": "Ring report", "generated": "2026-12-01"}, private)
    (folder / "ring.json").write_text(json.dumps(signed))
    (folder / "ring.html").write_text("<html><body><h1 id='r'>Ring report page</h1></body></html>")
    return private


def test_cluster_extend_reports_and_session_fences_in_chromium(gateway_server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    folder = tmp_path / "reports"
    private = _signed_report(folder, tmp_path / "keys")
    gateway = gateway_server(
        online_monitor="false", reports_dir=folder, evidence_signing_key_file=private
    )
    base, token = gateway
    members = [gateway.create_key(f"ring-{i}") for i in range(3)]
    clients = [
        openai.OpenAI(base_url=gateway.api_url, api_key=secret, max_retries=0)
        for _, _, secret in members
    ]
    for client in clients:
        assert ask(client, "same proxy, same day")

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    def count(css: str) -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, css))

    # An expired or forged session cookie: the sign-in form, with why.
    driver.get(f"{base}/console/login")
    for cookie, why in (
        (issue(token, 1, now=time.time() - 60)[0], "expired"),
        ("x.y", "not valid"),
    ):
        driver.add_cookie({"name": COOKIE_NAME, "value": cookie, "path": "/console"})
        driver.get(f"{base}/console/evidence")
        assert driver.find_elements(By.ID, "token") and why in text("error")
        driver.delete_all_cookies()

    sign_in(driver, base, token)
    wait_for_clusters(driver, base)
    link = driver.find_element(By.CSS_SELECTOR, "#clusters a")
    cid = link.text
    assert cid == cluster_id_of([m[0] for m in members])
    link.click()
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "cluster-id"))

    # The graph: three members, every kind of link they share drawn on each of the 3 pairs.
    assert text("cluster-id") == cid
    assert count("#graph circle.node") == 3 and count("#graph circle.node.marked") == 0
    kinds = [
        e.get_attribute("data-kind")
        for e in driver.find_elements(By.CSS_SELECTOR, "#graph line.link")
    ]
    # one proxy /24 and one signup day (and the SDK's agent string, in so small a population)
    assert {"created", "ip_prefix"} <= set(kinds) and len(kinds) == 3 * len(set(kinds))
    box = driver.execute_script("return document.getElementById('graph').getBBox()")
    assert box["width"] > 100 and box["height"] > 100
    assert "shared IP prefix" in text("legend") and "creation burst" in text("kinds")

    # A forged CSRF token is refused and changes nothing.
    driver.execute_script(
        "document.querySelector('#cluster-apply-form input[name=csrf]').value = 'forged'"
    )
    driver.find_element(By.ID, "cluster-apply-reason").send_keys("forged")
    click_and_load(driver, "cluster-apply")
    assert "Form refused" in driver.page_source
    assert all(ask(client, "still served") for client in clients)

    # One action for the whole cluster: a reason is required; then every member is refused.
    driver.get(f"{base}/console/clusters/{cid}")
    click_and_load(driver, "cluster-apply")
    assert "A reason is required" in text("error")
    driver.find_element(By.ID, "cluster-apply-reason").send_keys("one operator, three accounts")
    click_and_load(driver, "cluster-apply")
    assert text("notice") == "Action applied to every member."
    assert count("#graph circle.node.marked") == 3
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#members .member-action")] == [
        "block"
    ] * 3
    for client in clients:
        with pytest.raises(openai.PermissionDeniedError):
            ask(client, "refused now")

    # Extend one member's block from its page (a new expiry, audited).
    driver.get(f"{base}/console/accounts/{members[0][0]}")
    form = driver.find_element(By.CSS_SELECTOR, "form.extend")
    action_id = form.get_attribute("action").rsplit("/", 2)[-2]
    before = text(f"expires-{action_id}")
    Select(driver.find_element(By.ID, f"extend-days-{action_id}")).select_by_value("90")
    driver.find_element(By.ID, f"extend-reason-{action_id}").send_keys("the ring is still active")
    click_and_load(driver, f"extend-{action_id}")
    assert text("notice") == "Action extended." and text(f"expires-{action_id}") > before

    # Lift on the cluster: every member is served again.
    driver.get(f"{base}/console/clusters/{cid}")
    driver.find_element(By.ID, "cluster-lift-reason").send_keys("the customer explained")
    click_and_load(driver, "cluster-lift")
    assert text("notice") == "Actions lifted on every member."
    assert count("#graph circle.node.marked") == 0
    assert all(ask(client, "served again") for client in clients)

    # The evidence page lists the signed report; it opens behind the session.
    driver.get(f"{base}/console/evidence")
    assert text("sig-1") == "signed" and "Ring report" in text("reports")
    click_and_load(driver, "open-1")
    assert text("r") == "Ring report page"

    shots = save_screenshots(base, token, tmp_path / "shots", account=members[0][0])
    assert [s.name for s in shots] == [
        "console-overview.png",
        "console-account.png",
        "console-cluster.png",
        "console-search.png",
        "console-evidence.png",
    ]
    assert all(s.read_bytes().startswith(b"\x89PNG") for s in shots)
