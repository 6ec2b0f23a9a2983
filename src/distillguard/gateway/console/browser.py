"""Drive the console in Debian's Chromium (selenium + chromedriver, never a downloaded
browser): the browser tests and the demo's screenshots share this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver; pip install selenium==4.27.1"


def browser_available() -> str | None:
    """None when Chromium, chromedriver and selenium are all here; else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return f"missing {', '.join(missing)} ({INSTALL_HINT})" if missing else None


def chromium_driver(width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium session; ConfigError (with the install line) when it cannot run."""
    problem = browser_available()
    if problem:
        raise ConfigError(f"the console's browser is not available: {problem}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # runs as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # An explicit driver path: selenium-manager never runs, so nothing is downloaded.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def click_and_load(driver: Any, element_id: str, timeout: float = 15.0) -> None:
    """Click a submit button or link and wait until the next page has replaced this one
    (a click returns before a form's navigation has finished)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")

    def replaced(_: Any) -> bool:
        try:
            page.is_enabled()  # any call on the old page's root
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Chromium sometimes reports a replaced node as an inspector error rather than
            # a stale reference (selenium's staleness_of then fails instead of waiting).
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, timeout).until(replaced)
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def sign_in(driver: Any, base_url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/console/login")
    driver.find_element(By.ID, "token").send_keys(token)
    click_and_load(driver, "sign-in")


def full_page_png(driver: Any) -> bytes:
    """The whole page, not only the window (Chromium's DevTools capture beyond the viewport)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    return base64.b64decode(shot["data"])


def wait_for_clusters(driver: Any, base_url: str, timeout: float = 120.0) -> None:
    """Reload the overview until its clusters are linked (the first computation after a
    gateway starts runs in the background)."""
    from selenium.webdriver.support.wait import WebDriverWait

    def ready(d: Any) -> bool:
        d.get(f"{base_url}/console")
        return "Clusters are being linked" not in d.page_source

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)


def save_screenshots(
    base_url: str, token: str, out_dir: Path, *, account: str | None = None
) -> list[Path]:
    """One PNG per page under ``out_dir``: overview, account, the account's cluster (when it
    is in one), search, evidence."""
    from selenium.webdriver.common.by import By

    out_dir.mkdir(parents=True, exist_ok=True)
    driver = chromium_driver()
    saved = []

    def shoot(name: str, path: str | None = None) -> None:
        if path is not None:
            driver.get(base_url + path)
        target = out_dir / f"console-{name}.png"
        target.write_bytes(full_page_png(driver))
        saved.append(target)

    try:
        sign_in(driver, base_url, token)
        wait_for_clusters(driver, base_url)
        shoot("overview")
        if account:
            shoot("account", f"/console/accounts/{account}?show=1")
            links = driver.find_elements(By.ID, "cluster-link")
            if links:
                shoot("cluster", links[0].get_attribute("pathname"))
            shoot("search", f"/console/search?q={account}")
        shoot("evidence", "/console/evidence")
    finally:
        driver.quit()
    return saved
