"""Creating the engine: SQLite in WAL mode with serialised writers, or any other URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from isdr.db.models import Base
from isdr.errors import IsdrError

BUSY_TIMEOUT = 60.0  # seconds a SQLite writer waits for another before "database is locked"
# What an OperationalError says when the database cannot take a write for now (SQLite,
# PostgreSQL, MySQL wordings), and what the relay says instead.
_UNAVAILABLE = (
    (("database is locked", "table is locked", "lock timeout", "deadlock", "could not obtain lock"),
     "the database is locked by another writer"),
    (("database or disk is full", "no space left", "disk full", "could not extend"),
     "the database or its disk is full"),
    (("could not connect", "connection refused", "server closed the connection",
      "terminating connection", "gone away", "lost connection"),
     "the database cannot be reached"),
)  # fmt: skip


def unavailable_reason(message: str) -> str | None:
    """Why the database cannot take a write for now, from a driver's error message; None
    when the message tells of something else (a bug, a broken schema)."""
    lowered = message.lower()
    for fragments, reason in _UNAVAILABLE:
        if any(fragment in lowered for fragment in fragments):
            return reason
    return None


def make_engine(url: str, *, durable: bool = False, busy_timeout: float = BUSY_TIMEOUT) -> Engine:
    """An engine for `url`, with its schema created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, parsed.database, durable=durable, busy_timeout=busy_timeout)
    else:
        # Parameters hold PatientIDs and tokens: never in an error message or a log.
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


READER_BUSY_TIMEOUT = 1.0  # seconds a read of the HTTP side waits for SQLite, at most


def reader_engine(url: str) -> Engine:
    """An engine for reading only (the HTTP side): a small pool, and on SQLite plain
    reads that take no write lock (WAL lets them run beside the writers) and give up
    after a second rather than hold a connection. Its schema is the writer's."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_pre_ping=True, hide_parameters=True, pool_size=2, max_overflow=2
        )
    engine = create_engine(
        url,
        connect_args={"timeout": READER_BUSY_TIMEOUT, "check_same_thread": False},
        hide_parameters=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=READER_BUSY_TIMEOUT,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no BEGIN: each read stands alone
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Bring a database made by an earlier version up to date: new columns are nullable
    or have defaults, so adding them is all an upgrade needs (create_all adds tables)."""
    with engine.begin() as connection:
        inspector = inspect(connection)  # one connection: SQLite's writers queue otherwise
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and not column.nullable:
                    raise IsdrError(
                        f"the database lacks {table.name}.{column.name}, which cannot be "
                        "added in place: move DATA_DIR aside or migrate it by hand"
                    )
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.exec_driver_sql(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                    )
            for index in table.indexes:  # those of the added columns
                index.create(connection, checkfirst=True)


def _sqlite_engine(url: str, database: str | None, *, durable: bool, busy_timeout: float) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        hide_parameters=True,
    )
    synchronous = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below issue BEGIN IMMEDIATE itself, so that writers
        # queue on the busy timeout instead of failing on a lock upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
