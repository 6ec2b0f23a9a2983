"""Shared fixtures: an isolated DISTILLGUARD_HOME per test, the real data sets, a tiny model."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from distillguard.config import get_settings

# Two cores on this machine: one torch thread per test process avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI prints through rich, which wraps at the terminal width: a fixed, wide width keeps the
# tests' reading of whole lines independent of the terminal (or its absence) they run under.
os.environ.setdefault("COLUMNS", "200")

# The real data sets: ../shared/data relative to the repository root (the layout of the README
# and CI); DISTILLGUARD_DATA_DIR, when set, points elsewhere (a git worktree, another machine).
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DISTILLGUARD_DATA_DIR") or REPO_ROOT / ".." / "shared" / "data")


@pytest.fixture(autouse=True)
def dg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty state directory and fresh settings."""
    home = tmp_path / "dg_home"
    home.mkdir()
    monkeypatch.setenv("DISTILLGUARD_HOME", str(home))
    monkeypatch.setenv("DISTILLGUARD_DATA_DIR", str(SHARED_DATA))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the checkout; tests that need them skip when absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- databases (store room): the same tests against SQLite and PostgreSQL -----------------

PG_ADMIN_URL = os.environ.get(
    "DISTILLGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)  # a server where we may CREATE DATABASE (trust auth on this machine)


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh, uniquely named PostgreSQL database for this test session, dropped at the end.

    Yields its SQLAlchemy URL; skips (with the reason) only when the server is unreachable.
    """
    import secrets

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {str(exc).strip()[:200]}")
    name = f"dg_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        from sqlalchemy.engine import URL

        params = conninfo_to_dict(make_conninfo(PG_ADMIN_URL, dbname=name))
        url = URL.create(
            "postgresql+psycopg",
            username=params.get("user") or admin.info.user,
            password=params.get("password"),
            host=params.get("host", "127.0.0.1"),
            port=int(params.get("port", 5432)),
            database=name,
        )
        yield url.render_as_string(hide_password=False)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_pg_database(url: str) -> None:
    """Empty the session's database: drop everything in it, whoever left it connected."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """URL of an empty, not yet migrated database: a SQLite file, or the session's PostgreSQL
    database emptied for this test. Also set as DISTILLGUARD_DATABASE_URL (CLI, servers)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'distillguard.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
        _reset_pg_database(url)
    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `tiny` Llama chat model (standard HF directory), trained once per test session in
    a few seconds on real chat pairs from shared/data (a built-in text when that is absent)."""
    from distillguard.models.teacher import build_tiny_model

    data_dir = SHARED_DATA if (SHARED_DATA / "outputs").is_dir() else None
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", data_dir=data_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """A started GenerationEngine over `tiny_model_dir` (one torch thread), shared by a session;
    tests that count batches should build their own engine instead."""
    from distillguard.models.engine import GenerationEngine

    engine = GenerationEngine.from_dir(tiny_model_dir, num_threads=1, batch_wait_ms=5.0)
    engine.start()
    yield engine
    engine.stop()


# --- gateway room: a mock OpenAI upstream and real gateway servers --------------------------


@pytest.fixture(scope="session")
def mock_upstream():
    """A tiny OpenAI-compatible aiohttp server on 127.0.0.1 answering instantly, streaming too
    (models ``mock-model``, ``mock-slow``, ``mock-refuse``; ``.url``, ``.requests`` seen)."""
    from support.servers import MockUpstream

    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture
def gateway_server(tmp_path: Path, mock_upstream):
    """Factory for real gateways: ``gateway_server(**settings) -> GatewayProcess``, a
    ``distillguard serve`` subprocess on a free 127.0.0.1 port, proxying to ``mock_upstream``
    unless ``model_dir=`` or ``upstream=`` is given. Keyword settings become DISTILLGUARD_*
    variables (``redis_url=...``, ``default_rpm=5``). The handle unpacks as
    ``(base_url, admin_token)`` and offers ``create_key(account=None, rpm=, tpm=)`` ->
    (account_id, key_id, secret), ``api_url``, ``exchanges()``, ``kill()``. Stopped at teardown."""
    from distillguard.gateway.process import GatewayProcess

    started: list[GatewayProcess] = []

    def start(
        *,
        upstream: str | None = None,
        model_dir: Path | None = None,
        database_url: str | None = None,
        watermark: str = "off",
        **settings: object,
    ) -> GatewayProcess:
        env = {f"DISTILLGUARD_{name.upper()}": str(value) for name, value in settings.items()}
        if upstream is None and model_dir is None:
            upstream = mock_upstream.url
        server = GatewayProcess(
            home=tmp_path / f"gateway{len(started)}",
            admin_token=secrets.token_urlsafe(16),
            upstream=upstream,
            model_dir=model_dir,
            database_url=database_url,
            watermark=watermark,
            env=env,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
