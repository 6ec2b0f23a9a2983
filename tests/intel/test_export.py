"""intel export: a valid STIX 2.1 bundle of the flagged campaigns, with no user content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stix2validator import ValidationOptions, validate_file

from distillguard.traffic import prompt_text, read_labels, read_traffic, read_verdicts

OUR_SCOS = (
    "x-distillguard-client--",
    "x-distillguard-prompt-template--",
    "x-distillguard-request--",
)


def run_cli(*args: str, home: Path, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISTILLGUARD_HOME": str(home)}
    env.pop("DISTILLGUARD_INTEL_KEY", None)
    if key is not None:
        env["DISTILLGUARD_INTEL_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "distillguard", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_export_writes_a_valid_bundle_without_user_content(scored, intel_key, dg_home, tmp_path):
    out = tmp_path / "bundle.json"
    res = run_cli(
        "intel",
        "export",
        "--verdicts",
        str(scored.verdicts),
        "--traffic",
        str(scored.traffic),
        "--out",
        str(out),
        "--producer",
        "Provider A",
        "--tlp",
        "green",
        home=dg_home,
        key=intel_key,
    )
    assert res.returncode == 0, res.stderr
    # validation: no errors; the only warnings are the spec's UUIDv5 ids of our observables
    result = validate_file(str(out), ValidationOptions(version="2.1"))
    assert result.is_valid, [e.message for o in result.object_results for e in o.errors]
    for obj in result.object_results:
        for w in obj.warnings:
            assert str(w).startswith(OUR_SCOS) and "not a valid UUIDv4" in str(w), str(w)

    text = out.read_text()
    bundle = json.loads(text)
    objects = bundle["objects"]
    by_type: dict[str, list[dict]] = {}
    for o in objects:
        by_type.setdefault(o["type"], []).append(o)
    flagged = [v for v in read_verdicts(scored.verdicts) if v.flagged]
    groups = {v.cluster_id or v.account_id for v in flagged}
    assert len(by_type["campaign"]) == len(groups)
    assert {o["external_references"][0]["external_id"] for o in by_type["attack-pattern"]} == {
        "AML.T0024.002",
        "AML.T0040",
    }
    assert {o["identity_class"] for o in by_type["identity"]} == {"organization", "system"}
    kinds = {o["pattern"].split(":")[0][1:] for o in by_type["indicator"]}
    assert kinds >= {"x-distillguard-client", "x-distillguard-prompt-template"}
    for o in by_type["indicator"] + by_type["campaign"] + by_type["sighting"]:
        assert o["object_marking_refs"] == [
            "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
        ]
        assert 0 <= o.get("confidence", 0) <= 100
    assert all(s["count"] > 0 and s["first_seen"] <= s["last_seen"] for s in by_type["sighting"])
    rel_types = {r["relationship_type"] for r in by_type["relationship"]}
    assert rel_types == {"indicates", "uses"}

    # privacy: no account, key, raw IP, /24, user agent, payment fingerprint or prompt fragment
    lowered = text.lower()
    forbidden: set[str] = set()
    for r in read_traffic(scored.traffic):
        forbidden |= {r.account_id, r.key_id, r.ip, r.ip.rsplit(".", 1)[0] + ".0/24"}
        if r.user_agent:
            forbidden.add(r.user_agent.lower())
        if r.payment_fingerprint:
            forbidden.add(r.payment_fingerprint.lower())
        words = prompt_text(r.request).lower().split()
        forbidden |= {" ".join(words[i : i + 4]) for i in range(0, max(1, len(words) - 3), 7)}
    forbidden |= {lab.account_id for lab in read_labels(scored.labels)}
    forbidden |= {v.cluster_id for v in flagged if v.cluster_id}
    leaked = sorted(s for s in forbidden if len(s) >= 8 and s.lower() in lowered)
    assert not leaked, leaked[:5]


def test_the_demo_shares_the_campaign_it_caught(scored, intel_key, tmp_path) -> None:
    from distillguard.demo import DemoState, share_campaign

    flags = [
        {"account_id": v.account_id, "score": v.score, "cluster_id": v.cluster_id}
        for v in read_verdicts(scored.verdicts)
        if v.flagged
    ]
    state = DemoState(workdir=tmp_path, teacher_dir=tmp_path, quick=True)
    share_campaign(state, scored.traffic, flags)
    bundle = json.loads(state.files["bundle"].read_text())
    types = {o["type"] for o in bundle["objects"]}
    assert {"campaign", "indicator", "sighting", "identity"} <= types
