"""CLI for the store: ``accounts``, ``keys``, ``actions``, ``log`` and ``db`` sub-commands.

Every command takes ``--db URL`` (default: ``DISTILLGUARD_DATABASE_URL``, else the SQLite file
in ``DISTILLGUARD_HOME``) and brings the schema up to date first, so a newcomer's first
``accounts create`` just works. Errors (duplicate name, unknown account or key) are raised as
``DistillGuardError`` and printed by the root app with their exit code.

Changes made here are audited with the actor ``cli:<OS user>``. Actions applied or lifted here
reach running gateways through the database: every replica re-reads the actions in force
within ``DISTILLGUARD_ENFORCEMENT_REFRESH_S`` seconds.
"""

from __future__ import annotations

import getpass
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from distillguard.errors import InputError

if TYPE_CHECKING:
    from sqlalchemy import Engine

accounts_app = typer.Typer(help="Customer accounts.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys: create (secret shown once), list, revoke.", no_args_is_help=True
)
log_app = typer.Typer(
    help="The exchange log: export or import a traffic log, tail.", no_args_is_help=True
)
db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
actions_app = typer.Typer(
    help="Enforcement actions: apply, extend or lift with a reason, list, and the audit log.",
    no_args_is_help=True,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (default: DISTILLGUARD_DATABASE_URL, else SQLite in DISTILLGUARD_HOME).",
        show_default=False,
    ),
]

console = Console()


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(accounts_app, name="accounts")
    root.add_typer(keys_app, name="keys")
    root.add_typer(actions_app, name="actions")
    root.add_typer(log_app, name="log")
    root.add_typer(db_app, name="db")


def _url(db: str | None) -> str:
    """--db, else the settings' database (DISTILLGUARD_DATABASE_URL or SQLite in home)."""
    from distillguard.config import get_settings

    return db or get_settings().resolved_database_url


def _open(db: str | None) -> Engine:
    from distillguard.store import make_engine, migrate

    engine = make_engine(_url(db))
    migrate(engine=engine)
    return engine


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_time(text: str) -> float:
    """Unix seconds from ``1764000000``/``1764000000.5`` or ISO 8601 (UTC unless it says)."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InputError(
                f"not a time: {text!r} (give Unix seconds or ISO 8601, e.g. 2026-11-25T10:00)"
            ) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise InputError(f"not a time: {text!r} (Unix seconds must be finite and >= 0)")
    return value


def _short(text: str | None, width: int = 40) -> str:
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- accounts -----------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="Unique account name.")],
    org: Annotated[str | None, typer.Option(help="Organisation the account belongs to.")] = None,
    payment_fingerprint: Annotated[
        str | None, typer.Option(help="Opaque id of the account's payment method.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Create an account."""
    from distillguard.store import create_account, session_scope

    with session_scope(_open(db)) as session:
        account = create_account(
            session, name=name, org=org, payment_fingerprint=payment_fingerprint
        )
    console.print(f"created account [bold]{account.name}[/bold] with id {account.id}")


@accounts_app.command("list")
def accounts_list(db: DbOption = None) -> None:
    """List accounts with their count of active keys."""
    from distillguard.store import list_accounts, session_scope

    with session_scope(_open(db)) as session:
        accounts = list_accounts(session)
    table = Table("name", "org", "payment fingerprint", "status", "keys", "created")
    table.add_column("id", no_wrap=True)
    for a in accounts:
        table.add_row(
            a.name,
            a.org or "-",
            a.payment_fingerprint or "-",
            a.status,
            str(a.active_keys),
            _when(a.created_at),
            a.id,
        )
    console.print(table if accounts else "no accounts yet: `distillguard accounts create NAME`")


def _actor() -> str:
    """Who acts from the command line, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli:unknown"


def _set_status(account: str, status: str, reason: str, db: str | None) -> None:
    from distillguard.store import get_account, record_audit, session_scope, set_account_status

    with session_scope(_open(db)) as session:
        before = get_account(session, account=account).status
        info = set_account_status(session, account=account, status=status)
        record_audit(
            session,
            actor=_actor(),
            event="account.status",
            account_id=info.id,
            reason=reason,
            details={"from": before, "to": info.status},
        )
    console.print(f"account {info.name} ({info.id}) is now {info.status}")


@accounts_app.command("suspend")
def accounts_suspend(
    account: Annotated[str, typer.Argument(help="Account id or name.")],
    reason: Annotated[str, typer.Option(help="Why, kept with the action.")] = "manual",
    db: DbOption = None,
) -> None:
    """Suspend an account: its keys are refused (403) until it is reinstated."""
    _set_status(account, "suspended", reason, db)


@accounts_app.command("reinstate")
def accounts_reinstate(
    account: Annotated[str, typer.Argument(help="Account id or name.")],
    reason: Annotated[str, typer.Option(help="Why, kept with the action.")] = "manual",
    db: DbOption = None,
) -> None:
    """Reinstate a suspended account."""
    _set_status(account, "active", reason, db)


# --- keys ---------------------------------------------------------------------------------


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise InputError(f"not a duration: {text!r} (give e.g. 90s, 15m, 12h, 30d, 2w)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_metadata(text: str) -> dict:
    """A JSON object from the command line."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"--metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError('--metadata must be a JSON object, e.g. \'{"team": "search"}\'')
    return value


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Argument(help="Account id or name.")],
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute (default: server's).")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (default: server's).")] = None,
    alias: Annotated[
        str | None, typer.Option(help="A human name for the key (e.g. ci-bot).")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="Expiry time (Unix seconds or ISO 8601, UTC unless it says)."),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Expire after this long: 90s, 15m, 12h, 30d, 2w.")
    ] = None,
    metadata: Annotated[
        str | None, typer.Option(help='JSON object kept with the key, e.g. \'{"team": "x"}\'.')
    ] = None,
    token_budget: Annotated[
        int | None, typer.Option(help="Lifetime tokens; then 429 insufficient_quota.")
    ] = None,
    spend_budget: Annotated[
        float | None,
        typer.Option(help="Lifetime spend in USD at the configured token prices."),
    ] = None,
    secret_only: Annotated[
        bool, typer.Option("--secret-only", help="Print only the secret (for scripts).")
    ] = False,
    db: DbOption = None,
) -> None:
    """Create an API key. Its secret is printed once and cannot be shown again."""
    from distillguard.config import get_settings
    from distillguard.store import create_key, record_audit, session_scope
    from distillguard.store.accounts import expiry_time, require_prices

    expires_at = expiry_time(
        parse_time(expires) if expires is not None else None,
        parse_duration(expires_in) if expires_in is not None else None,
    )
    if spend_budget is not None:
        require_prices(get_settings().prices_set)
    with session_scope(_open(db)) as session:
        key, secret = create_key(
            session,
            account=account,
            rpm=rpm,
            tpm=tpm,
            alias=alias,
            expires_at=expires_at,
            metadata=parse_metadata(metadata) if metadata is not None else None,
            token_budget=token_budget,
            spend_budget_usd=spend_budget,
        )
        record_audit(
            session,
            actor=_actor(),
            event="key.create",
            account_id=key.account_id,
            target=key.key_id,
            details={
                "rpm": key.rpm,
                "tpm": key.tpm,
                "alias": key.alias,
                "expires_at": key.expires_at,
                "token_budget": key.token_budget,
                "spend_budget_usd": key.spend_budget_usd,
            },
        )
    if secret_only:
        typer.echo(secret)
        return
    named = f" ({key.alias})" if key.alias else ""
    console.print(f"created key [bold]{key.key_id}[/bold]{named} for account {key.account_name}")
    typer.echo(secret)  # plain echo: rich would wrap a long secret on a narrow terminal
    console.print(
        "[yellow]This secret is shown only now; only its hash is stored. Keep it safe.[/yellow]"
    )


def _budget(used: float, budget: float | None, money: bool = False) -> str:
    if budget is None:
        return "-"
    return f"${used:.2f}/${budget:.2f}" if money else f"{int(used)}/{int(budget)} tok"


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Argument(help="Only this account (id or name).")] = None,
    db: DbOption = None,
) -> None:
    """List keys (never their secrets), revoked and expired ones included."""
    from distillguard.store import list_keys, session_scope

    with session_scope(_open(db)) as session:
        keys = list_keys(session, account=account)
    table = Table()
    table.add_column("key id", no_wrap=True)  # what `keys revoke` takes: never cut
    for column in ("alias", "account", "rpm/tpm", "budget used", "expires", "revoked"):
        table.add_column(column)
    for k in keys:
        limits = "/".join("default" if v is None else str(v) for v in (k.rpm, k.tpm))
        budgets = [
            _budget(k.tokens_used, k.token_budget),
            _budget(k.spend_used_usd, k.spend_budget_usd, money=True),
        ]
        table.add_row(
            k.key_id,
            k.alias or "-",
            k.account_name,
            limits,
            ", ".join(b for b in budgets if b != "-") or "-",
            _when(k.expires_at) + (" (expired)" if k.expired() else ""),
            _when(k.revoked_at),
        )
    console.print(table if keys else "no keys")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after `dg-`).")],
    db: DbOption = None,
) -> None:
    """Revoke a key: refused from the next request on, in every gateway replica."""
    from distillguard.store import record_audit, revoke_key, session_scope

    with session_scope(_open(db)) as session:
        key = revoke_key(session, key_id=key_id)
        record_audit(
            session, actor=_actor(), event="key.revoke", account_id=key.account_id, target=key_id
        )
    console.print(
        f"revoked key {key.key_id} of account {key.account_name} at {_when(key.revoked_at)}"
    )


# --- actions ------------------------------------------------------------------------------


def _params(pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs; values are read as JSON when they parse (numbers, true, null)."""
    import orjson

    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param must look like name=value, got {pair!r}", param="params")
        try:
            out[name.strip()] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[name.strip()] = value
    return out


@actions_app.command("apply")
def actions_apply(
    account: Annotated[str, typer.Argument(help="Account id or name.")],
    action: Annotated[
        str,
        typer.Argument(
            help="flag, cap_logprobs, degrade, withhold_reasoning, perturb_reasoning, "
            "antidistill, throttle, block."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")],
    ttl: Annotated[float, typer.Option("--ttl", help="Lifetime in seconds (> 0).")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="An action parameter as name=value (repeatable)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Apply an action to an account for --ttl seconds, with a reason."""
    from distillguard.store import apply_action, session_scope

    with session_scope(_open(db)) as session:
        record = apply_action(
            session,
            account=account,
            action=action,
            reason=reason,
            ttl_s=ttl,
            params=_params(param or []),
            actor=_actor(),
        )
    console.print(
        f"action {record.id}: {record.action} on {record.account_id} until "
        f"{_when(record.expires_at)} UTC",
        markup=False,
    )


@actions_app.command("lift")
def actions_lift(
    action_id: Annotated[int, typer.Argument(help="The action's id (see `actions list`).")],
    reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")],
    db: DbOption = None,
) -> None:
    """Lift an active action, with a reason."""
    from distillguard.store import lift_action, session_scope

    with session_scope(_open(db)) as session:
        record = lift_action(session, action_id=action_id, reason=reason, actor=_actor())
    console.print(
        f"lifted action {record.id} ({record.action} on {record.account_id})", markup=False
    )


@actions_app.command("extend")
def actions_extend(
    action_id: Annotated[int, typer.Argument(help="The action's id (see `actions list`).")],
    ttl_s: Annotated[float, typer.Option(help="New lifetime in seconds, counted from now.")],
    reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")],
    db: DbOption = None,
) -> None:
    """Give an active action a new expiry (from now), with a reason."""
    from distillguard.store import session_scope
    from distillguard.store.actions import extend_action

    with session_scope(_open(db)) as session:
        record = extend_action(
            session, action_id=action_id, ttl_s=ttl_s, reason=reason, actor=_actor()
        )
    expires = datetime.fromtimestamp(record.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    console.print(
        f"extended action {record.id} ({record.action} on {record.account_id}) to {expires}",
        markup=False,
    )


@actions_app.command("list")
def actions_list(
    account: Annotated[str | None, typer.Option(help="Only this account (id or name).")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only actions in force.")] = False,
    limit: Annotated[int, typer.Option(help="How many, newest.", min=1)] = 50,
    db: DbOption = None,
) -> None:
    """List actions with their state (active, lifted, expired), actor and reason."""
    import time

    from distillguard.store import active_actions, get_account, list_actions, session_scope

    now = time.time()
    with session_scope(_open(db)) as session:
        account_id = None if account is None else get_account(session, account=account).id
        if active:
            rows = [
                r
                for r in active_actions(session, now=now)
                if account_id is None or r.account_id == account_id
            ][-limit:]
        else:
            rows = list_actions(session, account_id=account_id, limit=limit)
    table = Table("id", "account", "action", "state", "actor", "reason", "taken", "expires")
    for r in rows:
        state: str = r.state(now)
        if state == "lifted":
            state = f"lifted by {r.lifted_by}: {_short(r.lift_reason, 30)}"
        table.add_row(
            str(r.id),
            r.account_id,
            r.action,
            state,
            r.actor,
            _short(r.reason, 40),
            _when(r.ts),
            _when(r.expires_at),
        )
    console.print(table if rows else "no actions")


@actions_app.command("audit")
def actions_audit(
    account: Annotated[str | None, typer.Option(help="Only this account (id or name).")] = None,
    event: Annotated[
        str | None, typer.Option(help="Only this event, e.g. action.lift, admin.login_failed.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest.", min=1)] = 50,
    db: DbOption = None,
) -> None:
    """The audit log: who applied or lifted what, status changes, keys, failed admin logins."""
    from distillguard.store import get_account, list_audit, session_scope

    with session_scope(_open(db)) as session:
        account_id = None if account is None else get_account(session, account=account).id
        rows = list_audit(session, account_id=account_id, event=event, limit=limit)
    if not rows:
        console.print("no audit events")
        return
    for e in rows:
        console.print(
            f"{_when(e.ts)}  {e.actor}  {e.event}  {e.account_id or '-'}  {e.target or '-'}  "
            f"{_short(e.reason, 50)}  {e.ip or ''}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


# --- log ----------------------------------------------------------------------------------


@log_app.command("export")
def log_export(
    out: Annotated[
        Path, typer.Option("--out", help="JSON Lines file, or directory for --format parquet.")
    ],
    since: Annotated[
        str | None, typer.Option(help="Only exchanges from this time (Unix seconds or ISO 8601).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only exchanges before this time.")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl (one file) or parquet (day partitions, zstd, incremental: each run "
            "adds only exchanges newer than the last).",
        ),
    ] = "jsonl",
    db: DbOption = None,
) -> None:
    """Export the exchange log in the traffic-log format (shared/spec/traffic-log.md §1)."""
    from distillguard.progress import tracked
    from distillguard.store import count_exchanges, export_traffic_summary, session_scope

    start = parse_time(since) if since else None
    end = parse_time(until) if until else None
    if fmt not in ("jsonl", "parquet"):
        raise InputError(f"--format must be jsonl or parquet, got {fmt!r}")
    if fmt == "parquet":
        from distillguard.store.parquet import export_parquet

        with tracked(f"exporting to {out}", console=console, transient=True) as bar:
            res = export_parquet(_open(db), out, since=start, until=end, progress=bar)
        console.print(
            f"wrote {res.written:,} new exchanges in {res.parts:,} part files to {res.path} "
            f"({res.watermark.next_seq:,} in all)",
            soft_wrap=True,
        )
        return
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    engine = _open(db)
    with session_scope(engine) as session:
        expected = count_exchanges(session, since=start, until=end, attributed=True)
    with tracked(f"exporting to {out}", total=expected, console=console, transient=True) as bar:
        summary = export_traffic_summary(engine, out, since=start, until=end, progress=bar)
    console.print(f"wrote {summary.written:,} exchanges to {summary.path}", soft_wrap=True)
    if summary.unattributed:
        console.print(
            f"left out {summary.unattributed:,} unauthenticated attempts (no account or key; "
            "see `distillguard log tail`)"
        )


@log_app.command("import")
def log_import(
    path: Annotated[
        Path,
        typer.Argument(help="Traffic log: JSON Lines (plain or gzip) or a Parquet log directory."),
    ],
    db: DbOption = None,
) -> None:
    """Load a traffic log (spec §1) into the exchange log: malformed lines are skipped and
    reported, ids already present are left as they are."""
    from distillguard.progress import tracked
    from distillguard.store.export import import_traffic

    engine = _open(db)
    with tracked(f"importing {path} (lines)", console=console, transient=True) as bar:
        summary = import_traffic(engine, path, progress=bar)
    console.print(summary.describe(), markup=False, highlight=False, soft_wrap=True)


@log_app.command("tail")
def log_tail(
    n: Annotated[int, typer.Option("-n", "--lines", help="How many exchanges.", min=1)] = 20,
    account: Annotated[str | None, typer.Option(help="Only this account (id or name).")] = None,
    db: DbOption = None,
) -> None:
    """Show the newest exchanges (time, account, key, endpoint, status, tokens, latency, answer)."""
    from distillguard.store import get_account, recent_exchanges, session_scope

    with session_scope(_open(db)) as session:
        account_id = None if account is None else get_account(session, account=account).id
        rows = recent_exchanges(session, limit=n, account_id=account_id)
    if not rows:
        console.print("no exchanges logged" + (f" for {account}" if account else ""))
        return
    # One line an exchange (grep-friendly, no table wrapping on narrow terminals).
    for r in reversed(rows):
        tokens = f"{r.prompt_tokens or 0}+{r.completion_tokens or 0} tok"
        latency = "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms"
        answer = r.response_text if r.error is None else f"error: {r.error}"
        console.print(
            f"{_when(r.ts)}  {r.account_id or '-'}  {r.key_id or '-'}  {r.endpoint}  "
            f"{r.status}  {tokens}  {latency}  {_short(answer, 60)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


# --- db -----------------------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate(db: DbOption = None) -> None:
    """Create or upgrade the schema to the newest migration (safe to repeat)."""
    from distillguard.store.db import current_revision, describe, make_engine, migrate

    engine = make_engine(_url(db))
    migrate(engine=engine)
    console.print(f"{describe(engine)} is at schema revision {current_revision(engine)}")


@db_app.command("status")
def db_status(db: DbOption = None) -> None:
    """Show the schema revision and how many rows each table holds."""
    from sqlalchemy import func, select

    from distillguard.store.db import (
        current_revision,
        describe,
        head_revision,
        make_engine,
        session_scope,
    )
    from distillguard.store.schema import Base

    engine = make_engine(_url(db))
    current, head = current_revision(engine), head_revision()
    state = "up to date" if current == head else f"needs `distillguard db migrate` (to {head})"
    console.print(f"{describe(engine)}: schema {current or 'none'}, {state}")
    if current is None:
        return
    with session_scope(engine) as session:
        for name, table in sorted(Base.metadata.tables.items()):
            count = session.execute(select(func.count()).select_from(table)).scalar_one()
            console.print(f"  {name}: {count:,} rows")
