"""``/console/clusters/{id}``: a linked cluster's members, the links that tie them (drawn as
a server-side SVG graph), its coordination test, and one action for all its members.

The cluster comes from the process's snapshot (``clusters.ClusterCache``): the monitor's
linking and coordination test over keys the database aggregated from the log. Its id is the
monitor's (``links.cluster_id_of`` the member set), so the same accounts keep the same id.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated

import anyio.from_thread
from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from distillguard.gateway.console import charts
from distillguard.gateway.console.clusters import (
    KIND_WORDS,
    Snapshot,
    template_links,
    with_templates,
)
from distillguard.gateway.console.routes import (
    CONSOLE_BLOCK_TTL_S,
    ConsolePage,
    _client_ip,
    _clusters,
    _state,
    render,
    require_csrf,
    require_session,
    router,
)
from distillguard.monitor.coordination import CoordinationConfig
from distillguard.monitor.links import Cluster
from distillguard.store import actions as store_actions
from distillguard.store.db import session_scope
from distillguard.store.schema import Account, Exchange

log = logging.getLogger("distillguard.gateway.console")

CLUSTER_ID_PATTERN = r"cluster-[0-9a-f]{12}"  # links.cluster_id_of
MAX_DRAWN = 80  # members drawn in the graph; a larger cluster is listed in full below it
NOTICES = {
    "applied": "Action applied to every member.",
    "lifted": "Actions lifted on every member.",
}


@dataclass(frozen=True)
class Member:
    account_id: str
    name: str | None
    requests: int  # in the snapshot's window
    first_ts: float | None
    last_ts: float | None
    acted: str | None  # the action in force, if any
    score: float | None  # the live monitor's score, when it flags the account


def _find(request: Request, cluster_id: str) -> tuple[Snapshot, Cluster]:
    if not re.fullmatch(CLUSTER_ID_PATTERN, cluster_id):
        raise ConsolePage(404, "Unknown cluster", f"{cluster_id!r} is not a cluster id.")
    snapshot = _clusters(request).get(_state(request).engine)
    assert snapshot is not None  # wait=True computes one
    cluster = snapshot.cluster(cluster_id)
    if cluster is None:
        raise ConsolePage(
            404,
            "Unknown cluster",
            f"No cluster {cluster_id!r} among the {len(snapshot.clusters)} linked in the log "
            f"at {time.strftime('%H:%M:%S UTC', time.gmtime(snapshot.computed_at))} "
            "(clusters change with the traffic: open it again from the overview).",
        )
    return snapshot, cluster


def _cluster_page(
    request: Request,
    cluster_id: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    state = _state(request)
    snapshot, cluster = _find(request, cluster_id)
    cfg = _clusters(request).cfg
    members = cluster.members
    with session_scope(state.engine) as session:
        names: dict[str, str | None] = {
            a: name
            for a, name in session.execute(
                select(Account.id, Account.name).where(Account.id.in_(members))
            )
        }
        traffic = {
            a: (int(n), first, last)
            for a, n, first, last in session.execute(
                select(
                    Exchange.account_id, func.count(), func.min(Exchange.ts), func.max(Exchange.ts)
                )
                .where(Exchange.account_id.in_(members), Exchange.ts >= snapshot.since)
                .group_by(Exchange.account_id)
            )
        }
        in_force = {
            a.account_id: a.action
            for a in store_actions.active_actions(session)
            if a.account_id in set(members)
        }
        templates = template_links(session, members[:MAX_DRAWN], cfg)
    flags = {}
    if state.monitor is not None:
        flags = {f["account_id"]: f for f in state.monitor.flags() if f["account_id"] in members}
    rows = [
        Member(
            a,
            names.get(a),
            traffic.get(a, (0, None, None))[0],
            traffic.get(a, (0, None, None))[1],
            traffic.get(a, (0, None, None))[2],
            in_force.get(a),
            float(flags[a]["score"]) if a in flags else None,
        )
        for a in members
    ]
    edges = with_templates(snapshot.edges.get(cluster_id, ()), templates)
    label = {a: names.get(a) or a for a in members}
    graph = charts.network_graph(
        [(a, label[a], a in in_force) for a in members[:MAX_DRAWN]],
        [
            (
                e.a,
                e.b,
                e.kinds,
                f"{label[e.a]} - {label[e.b]}: " + ", ".join(KIND_WORDS[k] for k in e.kinds),
            )
            for e in edges
        ],
    )
    kinds = Counter(k for e in edges for k in e.kinds)
    test = snapshot.tests.get(cluster_id)
    return render(
        request,
        "cluster.html",
        status=status,
        cluster=cluster,
        members=rows,
        edges=edges,
        label=label,
        graph=graph,
        drawn=min(len(members), MAX_DRAWN),
        kinds=[(k, KIND_WORDS[k], kinds[k]) for k in KIND_WORDS if kinds[k]],
        kind_words=KIND_WORDS,
        test=test,
        top_score=max((m.score for m in rows if m.score is not None), default=None),
        snapshot=snapshot,
        alpha=CoordinationConfig().alpha,
        notice=NOTICES.get(notice or ""),
        error=error,
    )


@router.get("/clusters/{cluster_id}")
def cluster_page(
    request: Request,
    cluster_id: str,
    notice: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    require_session(request)
    return _cluster_page(request, cluster_id, notice=notice)


def _act_on_cluster(
    request: Request, cluster_id: str, csrf: str, reason: str, lift: bool
) -> Response:
    """Block every member (or lift every action in force on them) in one transaction, through
    ``store.actions`` like the account page: actor, reason, expiry, one audit row each."""
    require_csrf(request, csrf)
    reason = reason.strip()
    if not reason:
        return _cluster_page(
            request, cluster_id, error="A reason is required: say why, for the audit.", status=400
        )
    if len(reason) > store_actions.MAX_REASON_CHARS:
        return _cluster_page(
            request,
            cluster_id,
            error="The reason is too long (2000 characters at most).",
            status=400,
        )
    _, cluster = _find(request, cluster_id)
    state = _state(request)
    actor = f"console:{_client_ip(request)}"
    with session_scope(state.engine) as session:
        if lift:
            for action in store_actions.active_actions(session):
                if action.account_id in cluster.members:
                    store_actions.lift_action(
                        session, action_id=action.id, reason=reason, actor=actor
                    )
        else:
            for member in cluster.members:
                store_actions.apply_action(
                    session,
                    account=member,
                    action="block",
                    reason=reason,
                    ttl_s=CONSOLE_BLOCK_TTL_S,
                    actor=actor,
                    cluster_id=cluster_id,
                )
    anyio.from_thread.run(state.enforcement.publish_change)
    log.info("console: %s cluster %s (%s)", "lift" if lift else "block", cluster_id, reason)
    notice = "lifted" if lift else "applied"
    return RedirectResponse(f"/console/clusters/{cluster_id}?notice={notice}", status_code=303)


@router.post("/clusters/{cluster_id}/actions")
def apply_to_cluster(
    request: Request,
    cluster_id: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    return _act_on_cluster(request, cluster_id, csrf, reason, lift=False)


@router.post("/clusters/{cluster_id}/lift")
def lift_on_cluster(
    request: Request,
    cluster_id: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    return _act_on_cluster(request, cluster_id, csrf, reason, lift=True)
