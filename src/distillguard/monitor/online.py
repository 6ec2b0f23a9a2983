"""Online enforcement: the same signals as the offline detector, updated on every request.

``OnlineMonitor.check`` runs before a request is served: it folds the request into the
account's sketch (bounded memory), refreshes the account's links to other accounts now and
then, scores the account and its cluster, and asks the policy what to do. An action decided
for one account applies to every account of its cluster. ``record`` adds the response.

The monitor is pure: it keeps no shared state and does no I/O. Every new or more severe
decision is also queued as a ``Proposal`` (``take_proposals``) carrying its rule, lifetime and
evidence fingerprint; the gateway's enforcement state (``gateway.state``) persists proposals
as actions in the database - the one source of truth, shared by every replica - and tells the
monitor to ``forget`` an account whose action was lifted or expired, so that the policy may
decide again, on new evidence only. Each replica keeps its own sketches of the requests it
sees (with round-robin balancing that is an even sample of every account's traffic).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distillguard.monitor.coordination import ClusterTest, coordination_tests
from distillguard.monitor.links import (
    KINDS,
    Cluster,
    LinkConfig,
    LinkKeys,
    UnionFind,
    cluster_id_of,
    link_weight,
)
from distillguard.monitor.offline import DecisionConfig, link_keys
from distillguard.monitor.policy import SEVERITY, Policy, load_policy
from distillguard.monitor.score import (
    ScoreModel,
    best_end_user,
    feature_vector,
    joint_p,
    merge_signals,
    reasons,
    tiered_score,
    without,
)
from distillguard.monitor.signals import (
    AccountSignals,
    AccountSketch,
    MinHasher,
    SignalConfig,
    new_sketch,
    request_features,
)
from distillguard.monitor.trust import AccountInfo, TrustPolicy, load_trust, read_accounts

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.traffic import TrafficRecord


@dataclass(frozen=True)
class Decision:
    action: str  # allow | throttle | flag | block | degrade
    score: float
    reasons: tuple[str, ...]
    cluster_id: str | None
    retry_after: float | None


@dataclass
class _Enforcement:
    """Standing action of an account or cluster (the most severe decided so far)."""

    action: str
    score: float
    reasons: tuple[str, ...]
    retry_after: float | None
    since: float
    requests: int
    rule: str = ""
    ttl_s: float = 86_400.0
    params: tuple[tuple[str, object], ...] = ()
    link_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """A decision the policy took for one account, for the enforcement state to persist."""

    account_id: str
    action: str
    rule: str  # the policy rule's name: the action's actor is policy:<rule>
    ttl_s: float
    params: dict[str, object]
    score: float
    reasons: tuple[str, ...]
    cluster_id: str | None
    members: tuple[str, ...]  # the cluster (or the account alone), sorted
    link_kinds: tuple[str, ...]  # kinds of shared keys behind the cluster, sorted
    requests: int

    @property
    def evidence_fingerprint(self) -> str:
        """Names the evidence acted on: the rule, the action, who is linked and by what.
        An admin's lift holds until one of them changes (new evidence)."""
        basis = [self.rule, self.action, list(self.members), list(self.link_kinds)]
        return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:32]

    @property
    def evidence(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "score": round(self.score, 6),
            "requests": self.requests,
            "cluster_id": self.cluster_id,
            "cluster_size": len(self.members),
            "link_kinds": list(self.link_kinds),
        }


@dataclass
class _AccountState:
    sketch: AccountSketch
    keys: LinkKeys = field(default_factory=LinkKeys)
    score: float = 0.0
    signals: AccountSignals | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # throttle window


class OnlineMonitor:
    """Per-request signals, links and policy decisions (thread-safe)."""

    def __init__(
        self,
        policy: Policy,
        *,
        model: ScoreModel | None = None,
        signal_cfg: SignalConfig | None = None,
        link_cfg: LinkConfig | None = None,
        rescore_every: int = 8,
        relink_every: int = 64,
        background_links: bool = False,
        coordinate_every_s: float = 6 * 3600.0,
        decision: DecisionConfig | None = None,
        trust: TrustPolicy | None = None,
        accounts: dict[str, AccountInfo] | None = None,
    ) -> None:
        self.policy = policy
        self.model = model or ScoreModel.load()
        self.signal_cfg = signal_cfg or SignalConfig()
        self.link_cfg = link_cfg or LinkConfig()
        self.rescore_every = max(1, rescore_every)  # score every k-th request after the first 64
        self.relink_every = max(1, relink_every)  # refresh an account's link keys this often
        self._hasher = MinHasher(self.signal_cfg.minhash_k, self.signal_cfg.seed)
        # The coordination test over the linked clusters, as offline, every this many seconds
        # of traffic time (0: never). It costs seconds for a thousand accounts, so it runs on
        # a snapshot of the link keys, outside the lock (on the maintenance thread in the
        # gateway); a coordinated cluster sweeping broad content scores 1 - its p-value.
        self.coordinate_every_s = max(0.0, coordinate_every_s)
        self.decision = decision or DecisionConfig()
        # What the provider knows about its accounts (the accounts file, spec 1b) and its
        # trust tiers: the same grants, offsets and org explanations as offline.
        self.trust = trust or TrustPolicy()
        self.accounts = accounts
        self._coordinated: dict[str, ClusterTest] = {}  # cluster id -> a test it failed
        self._last_coordination: float | None = None
        self._coordination_due = False
        self._accounts: dict[str, _AccountState] = {}
        self._index: dict[str, dict[object, set[str]]] = {k: defaultdict(set) for k in KINDS}
        self._common: dict[str, set[object]] = {k: set() for k in KINDS}  # keys past the cap
        self._pairs: dict[tuple[str, str], dict[str, int]] = {}  # shared keys per kind
        self._uf = UnionFind()
        self._members: dict[str, set[str]] = {}  # cluster root -> members
        self._evidence: dict[str, set[str]] = defaultdict(set)  # cluster root -> kinds
        self._enforced: dict[str, _Enforcement] = {}  # account id -> standing action
        self._proposals: list[Proposal] = []  # decisions not yet taken by the enforcement state
        # cluster id -> (requests, members, merged signals, score, features) when computed
        self._cluster_cache: dict[str, tuple[int, int, AccountSignals, float, Any]] = {}
        self._lock = threading.Lock()
        # Cross-account linking touches other accounts' keys: with background_links it runs
        # on a maintenance thread, off the request path (the gateway); inline otherwise
        # (replays and tests, where results must not depend on thread timing).
        self._relink_due: dict[str, None] = {}  # insertion-ordered set of account ids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background_links:
            self._thread = threading.Thread(
                target=self._link_loop, name="monitor-links", daemon=True
            )
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> OnlineMonitor:
        """The gateway's monitor: its policy file (or the built-in one), the provider's
        accounts file and trust tiers when configured, and cross-account linking on a
        background thread."""
        accounts = read_accounts(settings.accounts_file) if settings.accounts_file else None
        return cls(
            load_policy(settings.policy_file),
            background_links=True,
            trust=load_trust(settings.trust_file),
            accounts=accounts,
        )

    # ---- the request path -------------------------------------------------------------------
    def check(
        self,
        *,
        account_id: str,
        key_id: str,
        payment_fingerprint: str | None,
        ip: str,
        user_agent: str | None,
        endpoint: str,
        request: dict[str, Any],
        ts: float,
    ) -> Decision:
        feats = request_features(request, self.signal_cfg)
        with self._lock:
            st = self._accounts.get(account_id)
            if st is None:
                st = self._accounts[account_id] = _AccountState(
                    new_sketch(self.signal_cfg, self._hasher, account_id)
                )
            sk = st.sketch
            sk.observe(
                ts=ts, ip=ip, user_agent=user_agent, payment=payment_fingerprint, features=feats
            )
            n = sk.n
            if n in (1, 8, 16, 32) or n % self.relink_every == 0:
                if self._thread is not None:
                    self._relink_due[account_id] = None
                else:
                    self._relink(account_id, st)
            if n <= 32 or n % self.rescore_every == 0:
                self._rescore(account_id, st, ts)
            decision = self._decision(account_id, st, ts)
            due = self._coordination_is_due(ts)
        if due and self._thread is None:
            self.coordinate(ts)
            with self._lock:
                decision = self._decision(account_id, st, ts)
        return decision

    def _coordination_is_due(self, ts: float) -> bool:
        if not self.coordinate_every_s:
            return False
        if self._last_coordination is None:
            self._last_coordination = ts
            return False
        if ts - self._last_coordination < self.coordinate_every_s:
            return False
        self._last_coordination = ts
        self._coordination_due = True
        return True

    def coordinate(self, ts: float | None = None) -> dict[str, ClusterTest]:
        """Run the coordination test over the current clusters (a snapshot of the link keys,
        computed outside the lock) and act on every coordinated cluster that sweeps broad
        content. Returns the tests of the clusters found coordinated."""
        with self._lock:
            self._coordination_due = False
            keys = {a: st.keys for a, st in self._accounts.items()}
            clusters = [
                Cluster(cluster_id_of(ms), tuple(sorted(ms)), tuple(sorted(self._evidence[r])))
                for r, ms in self._members.items()
                if len(ms) >= 2
            ]
        tests = coordination_tests(keys, clusters, self.link_cfg, self.decision.coordination)
        found = {}
        with self._lock:
            for cl in clusters:
                t = tests.get(cl.cluster_id)
                # kept up to p 0.05: below alpha the links alone act, above it they are
                # combined with the cluster's content (joint_p)
                if t is None or t.p_value > 0.05:
                    continue
                cid, members = self._cluster(cl.members[0])
                if cid != cl.cluster_id:
                    continue  # the cluster changed meanwhile: the next run tests it
                merged, _, _ = self._cluster_score(cid, members)
                if merged.topic_breadth < self.decision.broad_bar:
                    continue
                if self.trust.explaining_org(members, self.accounts) is not None:
                    continue
                self._coordinated[cid] = t
                if t.p_value <= self.decision.coordination.alpha:
                    found[cid] = t
                first = cl.members[0]
                when = ts if ts is not None else now()
                self._rescore(first, self._accounts[first], when)
        return found

    def record(
        self,
        *,
        account_id: str,
        response_text: str | None,
        completion_tokens: int | None,
        ts: float,
    ) -> None:
        with self._lock:
            st = self._accounts.get(account_id)
            if st is not None:
                st.sketch.observe_response(
                    completion_tokens=completion_tokens,
                    response_text=response_text,
                    ok=response_text is not None,
                )

    def replay(self, rec: TrafficRecord) -> Decision:
        """One logged exchange through the monitor as the gateway sees it: ``check`` on
        arrival, then ``record`` of the answer (evaluation and benchmark replays)."""
        decision = self.check(
            account_id=rec.account_id,
            key_id=rec.key_id,
            payment_fingerprint=rec.payment_fingerprint,
            ip=rec.ip,
            user_agent=rec.user_agent,
            endpoint=rec.endpoint,
            request=rec.request,
            ts=rec.ts,
        )
        self.record(
            account_id=rec.account_id,
            response_text=rec.response_text,
            completion_tokens=rec.completion_tokens,
            ts=rec.ts,
        )
        return decision

    def close(self) -> None:
        """Stop the maintenance thread (if any); pending link updates are applied first."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None
            self._drain_links(limit=None)

    def _link_loop(self) -> None:
        while not self._stop.wait(0.02):
            self._drain_links(limit=512)
            if self._coordination_due:
                self.coordinate()

    def _drain_links(self, limit: int | None) -> None:
        done = 0
        while limit is None or done < limit:
            with self._lock:  # one account at a time: requests interleave with the work
                if not self._relink_due:
                    return
                account_id = next(iter(self._relink_due))
                del self._relink_due[account_id]
                st = self._accounts.get(account_id)
                if st is not None:
                    self._relink(account_id, st)
            done += 1

    # ---- internals --------------------------------------------------------------------------
    def _relink(self, account_id: str, st: _AccountState) -> None:
        """Fold the change in one account's link keys into the pair counts, incrementally:
        the work is proportional to the keys that changed since the last time (after an
        account's first requests, few do), not to everything it shares."""
        old, new = st.keys, link_keys(st.sketch, self.link_cfg)
        st.keys = new
        cfg = self.link_cfg
        cap = min(cfg.max_key_accounts, max(60, int(cfg.max_key_share * len(self._accounts))))
        touched: set[str] = set()
        for kind, o, nw in self._key_sets(old, new):
            index, common = self._index[kind], self._common[kind]
            for k in o - nw:
                members = index.get(k)
                if members is None:
                    continue
                members.discard(account_id)
                if k not in common:
                    for b in members:
                        self._bump_pair(account_id, b, kind, -1)
            for k in nw - o:
                if k in common:
                    continue
                members = index[k]
                if len(members) >= cap:  # too common to mean anything: forget its pairs
                    common.add(k)
                    ms = sorted(members)
                    for i, a in enumerate(ms):
                        for b in ms[i + 1 :]:
                            self._bump_pair(a, b, kind, -1)
                    members.clear()
                    continue
                for b in members:
                    self._bump_pair(account_id, b, kind, 1)
                    touched.add(b)
                members.add(account_id)
        for b in touched:
            shared = self._pairs.get((account_id, b) if account_id < b else (b, account_id))
            if not shared:
                continue
            w, which = link_weight(shared, cfg)
            if w >= cfg.link_threshold:
                self._union(account_id, b, which)

    def _bump_pair(self, a: str, b: str, kind: str, delta: int) -> None:
        key = (a, b) if a < b else (b, a)
        counts = self._pairs.get(key)
        if counts is None:
            if delta < 0:
                return
            counts = self._pairs[key] = {}
        counts[kind] = counts.get(kind, 0) + delta

    def _union(self, a: str, b: str, kinds: tuple[str, ...]) -> None:
        ra, rb = self._uf.find(a), self._uf.find(b)
        if ra == rb:
            self._evidence[ra].update(kinds)
            return
        members = self._members.pop(ra, {a}) | self._members.pop(rb, {b})
        ev = self._evidence.pop(ra, set()) | self._evidence.pop(rb, set()) | set(kinds)
        self._uf.union(a, b)
        root = self._uf.find(a)
        self._members[root] = members
        self._evidence[root] = ev
        self._inherit(members)

    def _inherit(self, members: set[str]) -> None:
        """An account that joins an acted-on cluster takes the cluster's standing action at
        once (not at its own next request: a hydra account may never send another), so that
        the action and GET /admin/flags cover the whole cluster as it now stands."""
        standing = [e for m in members if (e := self._enforced.get(m)) is not None]
        if not standing:
            return
        top = max(standing, key=lambda e: (SEVERITY[e.action], e.score))
        cid = cluster_id_of(members)
        for m in members:
            cur = self._enforced.get(m)
            if cur is None or SEVERITY[top.action] > SEVERITY[cur.action]:
                self._enforced[m] = top
                self._propose(m, top, cid, members)

    @staticmethod
    def _key_sets(old: LinkKeys, new: LinkKeys) -> list[tuple[str, set, set]]:
        def mh(k: LinkKeys) -> set:
            return set(k.minhash) if k.minhash is not None else set()

        return [
            ("payment", set(old.payments), set(new.payments)),
            ("ip_prefix", set(old.prefixes), set(new.prefixes)),
            ("user_agent", set(old.user_agents), set(new.user_agents)),
            ("template", set(old.shingles), set(new.shingles)),
            ("timing", mh(old), mh(new)),
        ]

    def _cluster(self, account_id: str) -> tuple[str | None, set[str]]:
        root = self._uf.find(account_id) if account_id in self._uf.parent else account_id
        members = self._members.get(root)
        if not members or len(members) < 2:
            return None, {account_id}
        return cluster_id_of(members), members

    def _score(
        self, account_id: str, st: _AccountState
    ) -> tuple[float, int, AccountSignals, Any, int]:
        """The scoring step: (score, requests, signals, features, accounts) of the account,
        or of its cluster when the cluster scores higher."""
        sig = st.sketch.signals()
        st.signals = sig
        info = self.accounts.get(account_id) if self.accounts else None
        offset = self.trust.offset(account_id, info)
        granted = self.trust.granted(account_id, info)
        x = without(feature_vector(sig), granted)
        st.score = tiered_score(self.model, x, offset)
        eu = best_end_user(self.model, sig, granted, offset)
        if eu is not None and eu[0] > st.score:  # one end user judged on its own
            st.score, x, sig = eu[0], eu[2], eu[3]
        cid, members = self._cluster(account_id)
        if cid is not None and self.trust.explaining_org(members, self.accounts) is None:
            merged, _, xc = self._cluster_score(cid, members)
            xc = without(xc, granted)
            cs = tiered_score(self.model, xc, offset)
            test = self._coordinated.get(cid)
            if test is not None:
                alone = test.p_value if test.p_value <= self.decision.coordination.alpha else 1.0
                cs = max(cs, 1.0 - alone, 1.0 - joint_p(test.p_value, 1.0 - cs))
            if cs > st.score:
                return cs, merged.requests, merged, xc, len(members)
        return st.score, sig.requests, sig, x, 1

    def _rescore(self, account_id: str, st: _AccountState, ts: float) -> None:
        score, requests, sig_used, xs, n_acc = self._score(account_id, st)
        if requests < self.policy.min_requests:
            return
        cid, members = self._cluster(account_id)
        rule = self.policy.decide(
            score=score,
            threshold=self.model.online_threshold,
            requests=requests,
            cluster_size=len(members),
            signals=sig_used,
        )
        if rule is None or rule.action == "allow":
            return
        targets = members if cid is not None else {account_id}
        why: tuple[str, ...] | None = None
        kinds: tuple[str, ...] = ()
        for m in targets:
            cur = self._enforced.get(m)
            if cur is None or SEVERITY[rule.action] > SEVERITY[cur.action]:
                if why is None:  # words only when an action is taken
                    kinds = tuple(sorted(self._evidence.get(self._uf.find(account_id), ())))
                    why = reasons(self.model, xs, sig_used, n_acc, kinds)
                    test = self._coordinated.get(cid) if cid is not None else None
                    if test is not None:
                        alone = test.p_value <= self.decision.coordination.alpha
                        why = (
                            f"{'coordinated' if alone else 'linked'} cluster of "
                            f"{len(members)} accounts: p = "
                            f"{test.p_value:.1e} that chance links a cluster this large "
                            f"(shared {', '.join(kinds)})",
                            *why,
                        )
                self._enforced[m] = _Enforcement(
                    rule.action,
                    score,
                    why,
                    rule.retry_after,
                    ts,
                    requests,
                    rule=rule.name,
                    ttl_s=self.policy.ttl_of(rule),
                    params=rule.params,
                    link_kinds=kinds,
                )
                self._propose(m, self._enforced[m], cid, targets)

    def _cluster_score(self, cid: str, members: set[str]) -> tuple[AccountSignals, float, Any]:
        """Merged signals and score of a cluster, refreshed when it has grown by 1/8 (or got
        new members) since the last time: merging is linear in the cluster's size."""
        total = sum(self._accounts[m].sketch.n for m in members if m in self._accounts)
        cached = self._cluster_cache.get(cid)
        if cached is not None and total < cached[0] * 1.125 and cached[1] == len(members):
            return cached[2], cached[3], cached[4]
        sigs = [s for m in members if (s := self._signals_of(m)) is not None]
        merged = merge_signals(sigs)
        xc = feature_vector(merged, len(members))
        cs = self.model.score(xc)
        self._cluster_cache[cid] = (total, len(members), merged, cs, xc)
        return merged, cs, xc

    def _signals_of(self, account_id: str) -> AccountSignals | None:
        st = self._accounts.get(account_id)
        if st is None:
            return None
        if st.signals is None or st.sketch.n > st.signals.requests * 1.25 + 4:
            st.signals = st.sketch.signals()
        return st.signals

    def _decision(self, account_id: str, st: _AccountState, ts: float) -> Decision:
        enf = self._enforced.get(account_id)
        cid, _ = self._cluster(account_id)
        if enf is None:
            return Decision("allow", st.score, (), cid, None)
        action, retry = enf.action, enf.retry_after
        if action == "throttle":
            window = st.recent
            while window and ts - window[0] > 60.0:
                window.popleft()
            if len(window) < self.policy.throttle_rpm:
                window.append(ts)
                action, retry = "flag", None  # inside the throttled budget: served, flagged
            else:
                retry = retry or max(1.0, 60.0 - (ts - window[0]))
        return Decision(action, enf.score, enf.reasons, cid, retry)

    # ---- what the enforcement state takes ----------------------------------------------------
    def _propose(
        self, account_id: str, enf: _Enforcement, cid: str | None, members: set[str]
    ) -> None:
        proposal = Proposal(
            account_id=account_id,
            action=enf.action,
            rule=enf.rule or "policy",
            ttl_s=enf.ttl_s,
            params=dict(enf.params),
            score=enf.score,
            reasons=enf.reasons,
            cluster_id=cid,
            members=tuple(sorted(members)),
            link_kinds=enf.link_kinds,
            requests=enf.requests,
        )
        self._proposals.append(proposal)

    def take_proposals(self) -> list[Proposal]:
        """The decisions made since the last call (oldest first), for persisting."""
        if not self._proposals:  # the common case, without taking the lock
            return []
        with self._lock:
            out, self._proposals = self._proposals, []
            return out

    def forget(self, account_id: str) -> None:
        """Drop the account's standing action (it was lifted or expired): the policy may
        decide again at the account's next scoring, and proposes only if it still holds."""
        with self._lock:
            self._enforced.pop(account_id, None)

    # ---- admin ------------------------------------------------------------------------------
    def flags(self) -> list[dict[str, Any]]:
        """Accounts with a standing action other than allow, with their evidence."""
        with self._lock:
            local = dict(self._enforced)
            out = []
            for acct, enf in sorted(local.items(), key=lambda kv: -kv[1].score):
                cid, members = self._cluster(acct)
                out.append(
                    {
                        "account_id": acct,
                        "action": enf.action,
                        "score": round(enf.score, 6),
                        "reasons": list(enf.reasons),
                        "cluster_id": cid,
                        "cluster_size": len(members),
                        "since": enf.since,
                        "requests": enf.requests,
                        "evidence": sorted(self._evidence.get(self._uf.find(acct), ()))
                        if acct in self._uf.parent
                        else [],
                    }
                )
            return out

    def account_count(self) -> int:
        return len(self._accounts)

    def reset(self) -> None:
        """Forget every account (tests and benchmarks)."""
        with self._lock:
            self._accounts.clear()
            self._relink_due.clear()
            self._enforced.clear()
            self._proposals.clear()
            self._members.clear()
            self._evidence.clear()
            self._cluster_cache.clear()
            self._coordinated.clear()
            self._last_coordination = None
            self._uf = UnionFind()
            self._index = {k: defaultdict(set) for k in KINDS}
            self._common = {k: set() for k in KINDS}
            self._pairs.clear()


def now() -> float:
    return time.time()
