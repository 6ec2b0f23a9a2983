"""Chain of custody: signed reports verify, and a changed report, input or key is named."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.config import get_settings
from distillguard.errors import EvidenceTampered, InputError
from distillguard.forensics.custody import generate_keypair, sign_document, verify_document

from .test_report import _radioactivity

runner = CliRunner()


@pytest.fixture
def signed_report(tmp_path: Path) -> tuple[Path, Path, Path]:
    """keygen -> report signed with the key -> (report JSON, evidence input, public key)."""
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["prove", "keygen", "--out-dir", str(keys)])
    assert result.exit_code == 0, result.output
    evidence = tmp_path / "case" / "evidence.json"
    evidence.parent.mkdir()
    evidence.write_text(json.dumps(_radioactivity()))
    html = tmp_path / "case" / "report.html"
    result = runner.invoke(
        app,
        [
            "prove",
            "report",
            "--evidence",
            str(evidence),
            "--out",
            str(html),
            "--signing-key",
            str(keys / "evidence-signing.key"),
        ],
    )
    assert result.exit_code == 0, result.output
    return html.with_suffix(".json"), evidence, keys / "evidence-signing.pub"


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(InputError, match="never overwritten"):
        generate_keypair(tmp_path)


def test_signed_report_lists_inputs_and_verifies(signed_report: tuple[Path, Path, Path]) -> None:
    report, _evidence, public = signed_report
    document = json.loads(report.read_text())
    assert document["signature"]["algorithm"] == "ed25519"
    assert document["tool_version"] and document["key_ids"] == ["kgw:1"]
    [listed] = document["inputs"]
    assert listed["name"] == "evidence.json" and len(listed["sha256"]) == 64
    assert "p = 1e-09" in document["statement"] and "supports the claim" in document["statement"]
    result = runner.invoke(app, ["prove", "verify", str(report), "--public-key", str(public)])
    assert result.exit_code == 0, result.output
    assert "signature valid" in result.output and "inputs verified: 1" in result.output


def test_tampered_report_input_or_key_is_refused(
    signed_report: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    report, evidence, public = signed_report
    original = report.read_text()
    document = json.loads(original)
    document["evidence"][0]["tests"][0]["p_value"] = 1e-30  # a stronger claim, after signing
    report.write_text(json.dumps(document))
    result = runner.invoke(app, ["prove", "verify", str(report), "--public-key", str(public)])
    assert isinstance(result.exception, EvidenceTampered) and result.exception.exit_code == 9
    assert "changed after it was signed" in result.exception.message

    report.write_text(original)
    evidence.write_text(evidence.read_text().replace('"api"', '"weights"'))
    result = runner.invoke(app, ["prove", "verify", str(report), "--public-key", str(public)])
    assert isinstance(result.exception, EvidenceTampered)
    assert "evidence.json: SHA-256" in result.exception.message

    other = generate_keypair(tmp_path / "other")[1]
    result = runner.invoke(app, ["prove", "verify", str(report), "--public-key", str(other)])
    assert isinstance(result.exception, EvidenceTampered)
    assert "not by the given public key" in result.exception.message


def test_missing_input_unsigned_and_damaged_reports(
    signed_report: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    report, evidence, _public = signed_report
    moved = tmp_path / "evidence.json"
    evidence.rename(moved)
    result = runner.invoke(app, ["prove", "verify", str(report)])
    assert isinstance(result.exception, EvidenceTampered)
    assert "inputs were not found: evidence.json" in result.exception.message
    result = runner.invoke(app, ["prove", "verify", str(report), "--input", str(moved)])
    assert result.exit_code == 0, result.output
    assert "--public-key to check who signed it" in " ".join(result.output.split())

    document = json.loads(report.read_text())
    del document["signature"]
    with pytest.raises(EvidenceTampered, match="no signature"):
        verify_document(document)
    report.write_text(report.read_text()[:100])
    result = runner.invoke(app, ["prove", "verify", str(report)])
    assert isinstance(result.exception, EvidenceTampered) and "not JSON" in (
        result.exception.message
    )


def test_signing_key_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private, _ = generate_keypair(tmp_path / "k")
    monkeypatch.setenv("DISTILLGUARD_EVIDENCE_SIGNING_KEY_FILE", str(private))
    get_settings.cache_clear()
    evidence = tmp_path / "e.json"
    evidence.write_text(json.dumps(_radioactivity()))
    try:
        result = runner.invoke(
            app, ["prove", "report", "--evidence", str(evidence), "--out", str(tmp_path / "r.html")]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    signed = json.loads((tmp_path / "r.json").read_text())
    assert verify_document(signed).inputs_checked == ()  # no search dir, nothing given
    assert sign_document(signed, private)["signature"] == signed["signature"]  # deterministic


def test_report_page_in_a_real_browser(
    signed_report: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Headless Chromium loads the page: the statement, the input hash and the signature
    fingerprint are in the rendered DOM, and it renders to a screenshot."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (.ci/run installs the Debian package)")
    report, _, _ = signed_report
    document = json.loads(report.read_text())
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ]
    page = report.with_suffix(".html").as_uri()
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    assert document["statement"][:60] in dom
    assert document["inputs"][0]["sha256"] in dom
    assert document["signature"]["key_fingerprint"] in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,2000", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
