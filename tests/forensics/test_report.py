"""The evidence page escapes whatever the evidence files carry (names, key ids, commands)."""

from __future__ import annotations

from pathlib import Path

from distillguard.forensics.report import build_report, write_report

HOSTILE = "<script>alert(1)</script>"


def _radioactivity(**overrides: object) -> dict:
    test = {
        "test": "text-binomial",
        "exact": True,
        "num_scored": 400,
        "statistic": 260.0,
        "expected": 200.0,
        "z_score": 6.0,
        "log10_p_value": -9.0,
        "p_value": 1e-9,
        "calibration": {"keys": 20, "ks_p": 0.4, "fpr_0.001": 0.0},
        "null_log10_p": [-0.1 * i for i in range(20)],
    }
    ev = {
        "test": "radioactivity",
        "suspect": "suspect-model",
        "mode": "api",
        "scheme": "kgw",
        "key_id": 1,
        "texts": 10,
        "tokens": 400,
        "tests": [test],
        "accounts": [],
        "command": "distillguard prove radioactivity --suspect-url http://h/v1",
    }
    return ev | overrides


def test_report_escapes_evidence_strings(tmp_path: Path) -> None:
    ev = _radioactivity(
        suspect=f"model {HOSTILE}",
        key_id=HOSTILE,
        mode=HOSTILE,
        command=f"distillguard prove radioactivity --suspect {HOSTILE}",
        accounts=[
            {
                "account": HOSTILE,
                "cluster_id": HOSTILE,
                "test": "text-binomial",
                "num_scored": 10,
                "z_score": 4.0,
                "log10_p_value": -5.0,
                "p_value": 1e-5,
                "p_holm": 2e-5,
            }
        ],
    )
    report = build_report([ev], title=f"case {HOSTILE}")
    html_path, json_path = write_report(report, tmp_path / "report.html")
    page = html_path.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # title, key, mode, ...
    assert "key id &lt;script&gt;" in page  # the key id that used to go in unescaped
    assert 'src="data:image/png;base64,' in page  # the null plot is embedded
    assert json_path.is_file()


def test_report_marks_significant_rows_and_reproduction_command(tmp_path: Path) -> None:
    report = build_report([_radioactivity()], alpha=1e-3)
    page = write_report(report, tmp_path / "r.html")[0].read_text(encoding="utf-8")
    assert report.verdict_class == "positive"
    assert '<tr class="hit">' in page
    assert "<pre>distillguard prove radioactivity --suspect-url http://h/v1</pre>" in page
