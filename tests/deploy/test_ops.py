"""Operations endpoints and metrics of real gateway processes: /healthz, /readyz, /metrics.

Each test starts its own ``distillguard serve`` subprocess (the mock upstream stands in for
the provider's engine); the multiprocess-metrics test runs two uvicorn workers.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from distillguard.gateway.process import GatewayProcess, free_port

CHAT = [{"role": "user", "content": "hello ops"}]
QUIET = {"DISTILLGUARD_ONLINE_MONITOR": "false"}


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(gw: GatewayProcess) -> str:
    """/metrics as a Prometheus scraper configured with the admin token reads it."""
    response = httpx.get(
        f"{gw.base_url}/metrics", headers={"Authorization": f"Bearer {gw.admin_token}"}
    )
    assert response.status_code == 200, response.text
    return response.text


def chat_200_count(gw: GatewayProcess) -> float:
    samples = metric_samples(scrape(gw))
    labels = {"endpoint": "/v1/chat/completions", "model": "mock-model", "status": "200"}
    return samples.get(("distillguard_requests_total", frozenset(labels.items())), 0.0)


def sdk(gw: GatewayProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)


def test_readyz_names_a_down_upstream_generically(tmp_path: Path) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"  # no server listens on this port
    with GatewayProcess(
        home=tmp_path / "gw", admin_token=secrets.token_urlsafe(16), upstream=nothing_there
    ) as gw:
        # Alive (the process serves), so an orchestrator does not restart it ...
        assert httpx.get(f"{gw.base_url}/healthz").json() == {"status": "ok"}
        # ... but not ready: it says which dependency, and nothing about it.
        anonymous = httpx.get(f"{gw.base_url}/readyz")
        assert anonymous.status_code == 503
        assert anonymous.json() == {"status": "not ready", "failed": ["upstream"]}
        assert nothing_there.rsplit(":", 1)[1] not in anonymous.text
        wrong = httpx.get(f"{gw.base_url}/readyz", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 503 and "checks" not in wrong.json()
        # The operator, with the admin token, sees each check's detail.
        admin = httpx.get(
            f"{gw.base_url}/readyz", headers={"authorization": f"Bearer {gw.admin_token}"}
        ).json()
        checks = {c["name"]: c for c in admin["checks"]}
        assert set(checks) == {"database", "upstream"}
        assert checks["database"]["ok"] is True
        assert checks["upstream"]["ok"] is False and "Connect" in checks["upstream"]["detail"]


@pytest.mark.redis
def test_readyz_ready_with_database_redis_and_upstream(tmp_path: Path, mock_upstream) -> None:
    env = {**QUIET, "DISTILLGUARD_REDIS_URL": "redis://127.0.0.1:6379/0"}
    with GatewayProcess(
        home=tmp_path / "gw",
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env=env,
    ) as gw:
        ready = httpx.get(
            f"{gw.base_url}/readyz", headers={"authorization": f"Bearer {gw.admin_token}"}
        )
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["failed"] == []
        assert {c["name"]: c["ok"] for c in body["checks"]} == {
            "database": True,
            "redis": True,
            "upstream": True,
        }


def test_readyz_names_a_down_redis(tmp_path: Path, mock_upstream) -> None:
    env = {**QUIET, "DISTILLGUARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with GatewayProcess(
        home=tmp_path / "gw",
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env=env,
    ) as gw:
        anonymous = httpx.get(f"{gw.base_url}/readyz")
        assert anonymous.status_code == 503
        assert anonymous.json() == {"status": "not ready", "failed": ["redis"]}


def _requests_by_pid(directory: Path) -> dict[int, float]:
    """Chat requests each worker counted, read from its own multiprocess file."""
    counted: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(path)):
            if '"distillguard_requests_total"' in key and '"/v1/chat/completions"' in key:
                counted[pid] = counted.get(pid, 0.0) + value
    return counted


def test_two_workers_count_together(tmp_path: Path, mock_upstream) -> None:
    """`serve --workers 2` creates a metrics directory, both workers count into it, every
    scrape reports their sum, streams feed time to first token, and the directory goes at
    exit."""
    scratch = tmp_path / "tmp"  # the gateway's TMPDIR: where its metrics directory appears
    scratch.mkdir()
    gw = GatewayProcess(
        home=tmp_path / "gw",
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        workers=2,
        env={**QUIET, "TMPDIR": str(scratch)},
    )
    with gw:
        (metrics_dir,) = scratch.glob("distillguard-metrics-*")
        _, _, secret = gw.create_key(rpm=10_000)
        sent = 0
        # Batches of concurrent requests on fresh connections until both workers served some
        # (the kernel hands connections to either worker; 20 batches make missing one absurd).
        for _ in range(20):
            threads = [
                threading.Thread(
                    target=lambda: sdk(gw, secret).chat.completions.create(
                        model="mock-model", messages=CHAT
                    )
                )
                for _ in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent += len(threads)
            if len([n for n in _requests_by_pid(metrics_dir).values() if n > 0]) >= 2:
                break
        by_pid = _requests_by_pid(metrics_dir)
        assert len([n for n in by_pid.values() if n > 0]) == 2, by_pid
        assert sum(by_pid.values()) == sent
        # Whichever worker answers the scrape, it reports every worker's requests.
        assert [chat_200_count(gw) for _ in range(6)] == [sent] * 6

        stream = sdk(gw, secret).chat.completions.create(
            model="mock-model", messages=CHAT, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        samples = metric_samples(scrape(gw))
        chat = frozenset({"endpoint": "/v1/chat/completions", "model": "mock-model"}.items())
        assert samples[("distillguard_time_to_first_token_seconds_count", chat)] == 1
    assert not list(scratch.glob("distillguard-metrics-*"))


def test_operator_metrics_directory_is_cleaned_not_removed(tmp_path: Path, monkeypatch) -> None:
    from distillguard.cli.gateway import MULTIPROC_ENV, multiprocess_directory

    chosen = tmp_path / "prom"
    chosen.mkdir()
    (chosen / "counter_123.db").write_bytes(b"stale from an earlier run")
    (chosen / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(chosen))
    with multiprocess_directory() as used:
        assert used == chosen and not list(chosen.glob("*.db"))
    assert (chosen / "notes.txt").exists()  # the operator's directory and other files stay
