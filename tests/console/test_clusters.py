"""The console's clusters from the log (SQLite and PostgreSQL): a planted ring of accounts
sharing card, proxy /24, agent and schedule is found whole, its links named, its coordination
test far below chance; honest accounts stay out. The cache serves stale while it refreshes."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import insert

from distillguard.gateway.console import charts
from distillguard.gateway.console.clusters import (
    ClusterCache,
    ClusterConfig,
    compute,
    template_links,
    with_templates,
)
from distillguard.monitor.links import cluster_id_of
from distillguard.store import create_account, make_engine, migrate, session_scope
from distillguard.store.schema import Exchange

RING, HONEST = 8, 30
T0 = 1_700_000_000.0  # a multiple of the 5 s sync bucket


def _row(n: int, ts: float, account_id: str, ip: str, agent: str, prompt: str) -> dict:
    return {
        "id": f"ex{n:06d}",
        "ts": ts,
        "account_id": account_id,
        "ip": ip,
        "user_agent": agent,
        "endpoint": "/v1/chat/completions",
        "request": {"messages": [{"role": "user", "content": prompt}]},
        "status": 200,
    }


@pytest.fixture
def population(db_url):
    rng = random.Random(7)
    engine = make_engine(db_url)
    migrate(engine=engine)
    with session_scope(engine) as session:
        ring = [
            create_account(session, name=f"ring-{i}", payment_fingerprint="card-X").id
            for i in range(RING)
        ]
        honest = [create_account(session, name=f"honest-{i}").id for i in range(HONEST)]
    rows, n = [], 0
    for wave in range(20):  # a scheduler's waves: every ring member inside the same 5 s
        for i, a in enumerate(ring):
            n += 1
            topic = ["physics", "law", "poetry", "chemistry"][wave % 4]
            prompt = f"You are an expert tutor. Explain {topic} question {wave} step by step."
            ip = f"203.0.113.{10 + i}"  # one proxy /24
            rows.append(_row(n, T0 + wave * 600 + rng.random() * 4, a, ip, "scraper/1.0", prompt))
    for j, a in enumerate(honest):
        for k in range(12):
            n += 1
            ip = f"{10 + j}.{rng.randrange(256)}.{j}.{rng.randrange(256)}"
            ts = T0 + rng.random() * 20 * 600
            rows.append(_row(n, ts, a, ip, f"app-{j}/2.{k % 3}", f"user {j} asks thing {k}"))
    with engine.begin() as conn:
        conn.execute(insert(Exchange), rows)
    yield engine, ring, honest
    engine.dispose()


def test_the_ring_is_one_cluster_with_its_links_named(population):
    engine, ring, honest = population
    snapshot = compute(engine, ClusterConfig())
    assert snapshot.accounts == RING + HONEST
    assert [set(c.members) for c in snapshot.clusters] == [set(ring)]
    cluster = snapshot.clusters[0]
    assert cluster.cluster_id == cluster_id_of(ring)  # the monitor's id for the same members
    assert {"payment", "ip_prefix", "user_agent", "timing"} <= set(cluster.evidence)
    edges = snapshot.edges[cluster.cluster_id]
    assert len(edges) == RING * (RING - 1) // 2  # every pair shares all four
    assert all({"payment", "ip_prefix", "timing"} <= set(e.kinds) for e in edges)
    test = snapshot.tests[cluster.cluster_id]
    assert test.coordinated and test.p_value < 1e-3
    assert not set(honest) & set(snapshot.member_of)

    with session_scope(engine) as session:
        templates = template_links(session, cluster.members, ClusterConfig())
    assert {(a, b) for a, b, _ in templates} == {(e.a, e.b) for e in edges}
    merged = with_templates(edges, templates)
    assert all("template" in e.kinds for e in merged)

    graph = charts.network_graph(
        [(a, a, False) for a in cluster.members],
        [(e.a, e.b, e.kinds, "t") for e in merged],
    )
    assert len(graph.nodes) == RING
    assert len(graph.lines) == sum(len(e.kinds) for e in merged)  # one stroke per kind
    assert all(0 <= v <= graph.size for n in graph.nodes for v in (n.x, n.y))


def test_the_cache_serves_stale_while_it_refreshes(population):
    engine, ring, _ = population
    now = [0.0]
    cache = ClusterCache(ClusterConfig(ttl_s=60.0), clock=lambda: now[0])
    first = cache.get(engine)
    assert first is not None and cache.get(engine) is first  # fresh: reused
    now[0] = 61.0
    assert cache.get(engine) is first  # stale: served at once, a refresh runs behind it
    assert cache.refresher is not None
    cache.refresher.join(timeout=120)
    assert cache.get(engine) is not first
    assert [set(c.members) for c in cache.get(engine).clusters] == [set(ring)]
    cold = ClusterCache(ClusterConfig())
    assert cold.get(engine, wait=False) is None  # the first one computes in the background
    assert cold.refresher is not None
    cold.refresher.join(timeout=120)
    assert cold.get(engine, wait=False) is not None


def test_config_is_checked():
    with pytest.raises(ValueError):
        ClusterConfig(ttl_s=0)
    with pytest.raises(ValueError):
        ClusterConfig(template_prompts=0)
