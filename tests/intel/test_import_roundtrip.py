"""intel import: export -> import -> export without loss; bad bundles fail clearly."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import stix2

from distillguard.errors import ConfigError, InputError
from distillguard.intel.fingerprints import CommunityKey
from distillguard.intel.indicators import extract_intel
from distillguard.intel.stix import build_bundle
from distillguard.intel.stix_read import ReadStats, collect, read_bundle
from distillguard.intel.store import IntelStore
from distillguard.traffic import read_traffic, read_verdicts

from .conftest import KEY
from .test_export import run_cli


@pytest.fixture(scope="module")
def intel_set(scored):
    key = CommunityKey(KEY.encode())
    res = extract_intel(
        list(read_verdicts(scored.verdicts)),
        read_traffic(scored.traffic),
        key,
        producer="Provider A",
        created=time.time(),
    )
    assert res.intel.indicators
    return res.intel


def _objects(path_or_text) -> set[str]:
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    return {json.dumps(o, sort_keys=True) for o in json.loads(text)["objects"]}


def test_model_round_trips_through_a_bundle(intel_set) -> None:
    text = build_bundle(intel_set).serialize()
    stats = ReadStats()
    back = collect(read_bundle(io.BytesIO(text.encode()), stats))
    assert back == intel_set
    assert stats.skipped_count == 0 and stats.unevaluable == 0
    assert _objects(build_bundle(back).serialize()) == _objects(text)


def test_export_import_export_through_the_cli(scored, intel_key, dg_home, tmp_path) -> None:
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    args = ("--verdicts", str(scored.verdicts), "--traffic", str(scored.traffic))
    assert (
        run_cli(
            "intel",
            "export",
            *args,
            "--out",
            str(first),
            "--producer",
            "Provider A",
            home=dg_home,
            key=intel_key,
        ).returncode
        == 0
    )
    res = run_cli("intel", "import", str(first), home=dg_home, key=intel_key)
    assert res.returncode == 0, res.stderr
    assert "Provider A" in res.stdout
    res = run_cli(
        "intel",
        "export",
        "--source",
        "Provider A",
        "--out",
        str(again),
        home=dg_home,
        key=intel_key,
    )
    assert res.returncode == 0, res.stderr
    assert _objects(again) == _objects(first)
    # importing the same bundle twice keeps one copy of each indicator
    with open(first, "rb") as fh, IntelStore(dg_home) as store:
        store.import_bundle(fh, CommunityKey(KEY.encode()))
        shared, unevaluable = store.shared_indicators()
    assert len(shared) == sum(
        o["type"] == "indicator" for o in json.loads(first.read_text())["objects"]
    )
    assert not unevaluable


def test_missing_key_is_a_clear_error(scored, dg_home, tmp_path) -> None:
    res = run_cli(
        "intel",
        "export",
        "--verdicts",
        str(scored.verdicts),
        "--traffic",
        str(scored.traffic),
        "--out",
        str(tmp_path / "b.json"),
        home=dg_home,
        key=None,
    )
    assert res.returncode == ConfigError.exit_code
    assert "DISTILLGUARD_INTEL_KEY is not set" in res.stderr and "Traceback" not in res.stderr


def _import(store: IntelStore, text: str, key: str = KEY):
    return store.import_bundle(io.BytesIO(text.encode()), CommunityKey(key.encode()))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "bundle", "id": "bundle--1", "objects": [{"type": "campa', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type": "report", "objects": []}', "top-level type is 'report'"),
        ('{"type": "bundle", "spec_version": "2.0", "objects": []}', "only STIX 2.1"),
        ('{"type": "bundle", "id": "bundle--1", "objects": []}', "nothing to import"),
    ],
)
def test_broken_bundles_are_refused_and_change_nothing(intel_set, dg_home, text, message) -> None:
    with IntelStore(dg_home) as store:
        _import(store, build_bundle(intel_set).serialize())
        before = store.shared_indicators()
        with pytest.raises(InputError, match=message):
            _import(store, text)
        assert store.shared_indicators() == before


def test_a_truncated_bundle_is_refused_whole(intel_set, dg_home) -> None:
    text = build_bundle(intel_set).serialize()
    with IntelStore(dg_home) as store:
        with pytest.raises(InputError, match="not valid JSON after"):
            _import(store, text[: len(text) * 2 // 3])
        assert store.shared_indicators() == ([], [])


def test_another_community_key_is_refused(intel_set, dg_home) -> None:
    with IntelStore(dg_home) as store, pytest.raises(InputError, match="under community key"):
        _import(store, build_bundle(intel_set).serialize(), key="a-different-community-key")


def test_unknown_objects_and_unevaluable_patterns_are_counted_with_ids(intel_set, dg_home):
    ours = json.loads(build_bundle(intel_set).serialize())
    producer = intel_set.producer_id
    foreign = [
        stix2.v21.Indicator(
            id="indicator--00000000-0000-4000-8000-000000000001",
            pattern="[ipv4-addr:value = '198.51.100.7']",
            pattern_type="stix",
            valid_from="2026-11-01T00:00:00Z",
            created_by_ref=producer,
        ),
        stix2.v21.Indicator(
            id="indicator--00000000-0000-4000-8000-000000000002",
            pattern="rule x { condition: true }",
            pattern_type="yara",
            valid_from="2026-11-01T00:00:00Z",
            created_by_ref=producer,
        ),
        stix2.v21.Malware(
            id="malware--00000000-0000-4000-8000-000000000003", name="m", is_family=False
        ),
    ]
    objects = ours["objects"] + [json.loads(o.serialize()) for o in foreign]
    objects.append(
        {
            "type": "x-unknown-thing",
            "id": "x-unknown-thing--00000000-0000-4000-8000-000000000004",
            "spec_version": "2.1",
        }
    )
    objects.append(
        {
            "type": "indicator",
            "id": "indicator--00000000-0000-4000-8000-000000000005",
            "spec_version": "2.1",
        }
    )  # no pattern: invalid
    text = json.dumps({"type": "bundle", "id": ours["id"], "objects": objects})
    with IntelStore(dg_home) as store:
        rep = _import(store, text)
        shared, unevaluable = store.shared_indicators()
    skipped = {s.object_id: s.reason for s in rep.stats.skipped}
    assert rep.stats.skipped_count == len(skipped) == 3
    assert "unknown object type" in skipped["x-unknown-thing--00000000-0000-4000-8000-000000000004"]
    assert "not used" in skipped["malware--00000000-0000-4000-8000-000000000003"]
    assert "invalid indicator" in skipped["indicator--00000000-0000-4000-8000-000000000005"]
    reasons = dict(unevaluable)
    assert (
        "not a pattern form distillguard evaluates"
        in reasons["indicator--00000000-0000-4000-8000-000000000001"]
    )
    assert "yara" in reasons["indicator--00000000-0000-4000-8000-000000000002"]
    assert rep.unevaluable == 2
    assert len(shared) == len(intel_set.indicators)  # ours are all still there


def test_a_large_bundle_is_streamed_not_loaded(dg_home, tmp_path) -> None:
    import tracemalloc

    key = CommunityKey(KEY.encode())
    producer = "identity--00000000-0000-4000-8000-00000000000a"
    head = {
        "type": "identity",
        "spec_version": "2.1",
        "id": producer,
        "name": "Big Partner",
        "created": "2026-11-01T00:00:00.000Z",
        "modified": "2026-11-01T00:00:00.000Z",
    }
    path = tmp_path / "big.json"
    n = 600
    with open(path, "w") as fh:
        fh.write(
            '{"type": "bundle", "id": "bundle--00000000-0000-4000-8000-00000000000b", '
            '"objects": [' + json.dumps(head)
        )
        for i in range(n):
            h = key.hash("ip_prefix", f"10.{i // 256}.{i % 256}.0/24")
            fh.write(
                ", "
                + json.dumps(
                    {
                        "type": "indicator",
                        "spec_version": "2.1",
                        "id": f"indicator--{i:08x}-0000-4000-8000-000000000000",
                        "created": "2026-11-01T00:00:00.000Z",
                        "modified": "2026-11-01T00:00:00.000Z",
                        "created_by_ref": producer,
                        "pattern_type": "stix",
                        "pattern": f"[x-distillguard-client:ip_prefix_hmac = '{h}']",
                        "valid_from": "2026-11-01T00:00:00Z",
                        "description": "x" * 10_000,
                    }
                )
            )
        fh.write("]}")
    size = path.stat().st_size
    tracemalloc.start()
    with IntelStore(dg_home) as store, open(path, "rb") as fh:
        rep = store.import_bundle(fh, key)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        shared, _ = store.shared_indicators()
    assert rep.indicators == n and len(shared) == n
    assert peak < size / 4, (peak, size)  # bounded by one object, not by the file
