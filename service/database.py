"""Database engine, sessions and schema migrations (Alembic, configured in code)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0xC17E5


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection.
    Server databases get ``pool_pre_ping`` (a dropped connection is replaced, not used); a SQLite
    file cannot drop a connection, so it skips that extra round trip per checkout."""
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"pool_pre_ping": not is_sqlite}
    if is_sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # FULL: a 2xx is sent after the commit, so the commit must survive a power cut too
            # (NORMAL survives a process crash only); images are fsynced likewise.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` built in code (no alembic.ini): script location in the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: escape '%' (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema of ``engine``'s database to the newest migration."""
    alembic_logger = logging.getLogger("alembic")
    if not alembic_logger.isEnabledFor(logging.DEBUG):
        alembic_logger.setLevel(logging.WARNING)  # its INFO lines are noise for CLI users
    from alembic import command

    url = engine.url.render_as_string(hide_password=False)
    config = alembic_config(url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait, then find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.debug("database schema is up to date (%s)", engine.url.render_as_string())


def ping(engine: Engine) -> bool:
    """True when the database answers a trivial query."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any driver error means "not ready"
        logger.warning("database ping failed", exc_info=True)
        return False


def sqlite_dir(url: str) -> Path | None:
    """The folder of a SQLite database file (to create it), or None for other backends."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        return Path(url[len(prefix) :]).parent
    return None


def private_sqlite_files(url: str) -> None:
    """Make a SQLite database and its WAL/SHM files readable by the service's user only (0600;
    SQLite creates the WAL and SHM files with the database file's mode)."""
    folder = sqlite_dir(url)
    if folder is None:
        return
    database = Path(url[len("sqlite:///") :])
    for path in (database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))):
        try:
            if path.exists():
                path.chmod(0o600)
        except OSError as exc:
            logger.warning("could not make %s private (0600): %s", path, exc)
