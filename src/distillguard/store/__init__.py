"""The store: accounts and API keys, the exchange log, enforcement actions and
the audit log, and their export.

SQLAlchemy 2 over SQLite (embedded default, WAL) or PostgreSQL (by URL), with Alembic
migrations shipped inside the package. Data access is keyword-only functions over a
``Session``; the gateway's hot path uses ``authenticate`` and ``ExchangeLog``.
"""

from __future__ import annotations

from distillguard.store.accounts import (
    AccountInfo,
    KeyIdentity,
    KeyInfo,
    authenticate,
    create_account,
    create_key,
    get_account,
    list_accounts,
    list_keys,
    revoke_key,
    set_account_status,
)
from distillguard.store.actions import (
    ActionRecord,
    AuditRecord,
    active_actions,
    apply_action,
    lift_action,
    list_actions,
    list_audit,
    record_audit,
)
from distillguard.store.db import (
    autocommit_connection,
    make_engine,
    migrate,
    require_current_schema,
    session_scope,
)
from distillguard.store.exchanges import (
    ExchangeLog,
    count_exchanges,
    iter_exchanges,
    recent_exchanges,
)
from distillguard.store.export import export_traffic, export_traffic_summary, import_traffic
from distillguard.wire.exchange import ExchangeRecord, new_exchange_id

__all__ = [
    "AccountInfo",
    "ActionRecord",
    "AuditRecord",
    "ExchangeLog",
    "ExchangeRecord",
    "KeyIdentity",
    "KeyInfo",
    "active_actions",
    "apply_action",
    "authenticate",
    "autocommit_connection",
    "count_exchanges",
    "create_account",
    "create_key",
    "export_traffic",
    "export_traffic_summary",
    "get_account",
    "import_traffic",
    "iter_exchanges",
    "lift_action",
    "list_accounts",
    "list_actions",
    "list_audit",
    "list_keys",
    "make_engine",
    "migrate",
    "new_exchange_id",
    "recent_exchanges",
    "record_audit",
    "require_current_schema",
    "revoke_key",
    "session_scope",
    "set_account_status",
]
