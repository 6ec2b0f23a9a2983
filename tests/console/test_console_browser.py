"""The console in a real browser (Debian's Chromium through selenium): sign in, open each
page, see a hostile prompt as text, apply and lift a suspension and watch the account be
refused and served again through the ``openai`` SDK."""

from __future__ import annotations

import openai
import pytest

from distillguard.gateway.console.browser import (
    browser_available,
    chromium_driver,
    click_and_load,
    save_screenshots,
    sign_in,
)

pytestmark = pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))

HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'> hello"


@pytest.fixture
def driver():
    browser = chromium_driver()
    yield browser
    browser.quit()


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
    ]
    assert all(s.read_bytes().startswith(b"\x89PNG") for s in shots)
