"""The signed evidence page in a real browser (Debian's Chromium through selenium): a reviewer
sees the plain-words claim, every input with its SHA-256 (the suspect's model files and the
harvest included), the key id and the signing key's fingerprint; the plots load, nothing from
the evidence runs as script; and ``prove verify`` accepts the report with its inputs and names
the one file that changed afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.errors import EvidenceTampered
from distillguard.forensics.custody import describe_evidence_inputs
from distillguard.gateway.console.browser import browser_available, chromium_driver

from .test_report import _radioactivity

pytestmark = pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))
runner = CliRunner()
HOSTILE = "<img src=x onerror='window.__pwned = 1'><script>window.__pwned = 2</script>"


@pytest.fixture
def driver():
    browser = chromium_driver()
    yield browser
    browser.quit()


def _case(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """A suspect model folder and a harvest beside two evidence files, a signed report of
    them; returns (report JSON, public key, the evidence's own input files)."""
    case = tmp_path / "case"
    model = case / "suspect-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    harvest = case / "harvest.jsonl"
    harvest.write_text(json.dumps({"prompt": "q", "answer": "a"}) + "\n")
    radioactivity = _radioactivity(
        suspect=f"suspect {HOSTILE}",
        inputs=describe_evidence_inputs([harvest], model),
    )
    dose = {
        "test": "dose-response",
        "title": "sft students, text only",
        "series": [{"label": "sft / full", "shares": [0, 5, 100], "log10_p": [-0.2, -1.1, -40]}],
        "calibration": {"full": {"null_pvalues": 1000, "fpr_1e-3": 0.001, "ks_p": 0.5}},
        "command": "python benchmarks/radioactivity_text.py",
    }
    paths = []
    for name, ev in (("evidence.json", radioactivity), ("dose.json", dose)):
        (case / name).write_text(json.dumps(ev))
        paths += ["--evidence", str(case / name)]
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["prove", "keygen", "--out-dir", str(keys)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "prove",
            "report",
            *paths,
            "--out",
            str(case / "report.html"),
            "--signing-key",
            str(keys / "evidence-signing.key"),
            "--title",
            "Case 17",
        ],
    )
    assert result.exit_code == 0, result.output
    files = [harvest, model / "config.json", model / "model.safetensors"]
    return case / "report.json", keys / "evidence-signing.pub", files


def test_signed_report_reads_and_verifies_in_chromium(driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    report, public, files = _case(tmp_path)
    document = json.loads(report.read_text())
    driver.get(report.with_suffix(".html").as_uri())

    assert driver.find_element(By.TAG_NAME, "h1").text == "Case 17"
    verdict = driver.find_element(By.CSS_SELECTOR, ".verdict")
    assert "positive" in verdict.get_attribute("class").split()
    assert verdict.text.startswith("Evidence of distillation")
    statement = driver.find_element(By.ID, "statement").text
    assert statement.startswith("Claim: the model 'suspect <img")  # shown as text
    assert "key id 1" in statement and "p = 1e-09" in statement
    assert "Meaning:" in statement and "supports the claim" in statement
    assert driver.execute_script("return window.__pwned === undefined")

    # Chain of custody: every input with its hash and who used it; the signing key's print.
    cells = [
        [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, "#inputs tr")[1:]
    ]
    shown = {c[0]: (c[2], c[3]) for c in cells}
    for item in document["inputs"]:
        assert shown[item["name"]][0] == item["sha256"]
    assert shown["suspect-model/model.safetensors"][1] == "evidence.json"
    assert shown["harvest.jsonl"][1] == "evidence.json"
    assert shown["dose.json"][1] == "this report"
    fingerprint = document["signature"]["key_fingerprint"]
    assert fingerprint in driver.find_element(By.ID, "signature").text
    assert "kgw:1" in driver.page_source
    plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) >= 2  # the null distribution and the dose-response
    assert all(
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p) > 100
        for p in plots
    )

    # The reviewer's check: signature and every input, given where they are.
    given = [arg for f in files for arg in ("--input", str(f))]
    args = ["prove", "verify", str(report), "--public-key", str(public), *given]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "signature valid" in result.output and "inputs verified: 5" in result.output
    weights = files[2]
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # the suspect model changed
    result = runner.invoke(app, args)
    assert isinstance(result.exception, EvidenceTampered)
    assert "model.safetensors: SHA-256" in result.exception.message
