"""The store's schema as an ordered list of migrations, and bringing a database up to it.

Rules kept here:
- `MIGRATIONS[n]` takes a database from schema version n to n + 1. A step is a tuple of
  plain SQL statements, run one by one. A released step is never edited: a change is
  a new step at the end;
- the version is recorded in the `schema_version` table, one row per applied step
  (a table, not SQLite's `PRAGMA user_version`, so PostgreSQL records it the same way);
- opening applies every missing step and records it in ONE transaction, under the
  write lock, after reading the version inside it: a crash leaves the old version or
  the new one, and two processes opening one database at once migrate it once;
- a database newer than this code (a downgrade) is refused with `SchemaTooNew`, one
  line, before anything is written: old code must not write rows it does not know;
- a database from before versioning (tables, no `schema_version`) is taken as version 0:
  step 1 creates only what is missing (IF NOT EXISTS), after `_bridge_unversioned` has
  added the one column added before versioning existed (nodes.seccomp).

SQLite-specific, to translate for PostgreSQL (everything else is plain SQL both run):
- `INTEGER PRIMARY KEY AUTOINCREMENT` (PostgreSQL: `BIGINT GENERATED ALWAYS AS IDENTITY
  PRIMARY KEY`) and `REAL` timestamps, which SQLite keeps as 8-byte floats
  (PostgreSQL's REAL is 4 bytes: use DOUBLE PRECISION);
- `BEGIN IMMEDIATE` to take the write lock before reading the version (PostgreSQL:
  `BEGIN; LOCK TABLE schema_version IN EXCLUSIVE MODE`);
- `_bridge_unversioned` reads `PRAGMA table_info`; PostgreSQL databases are versioned
  from their first day, so it never runs there.
SQLite runs DDL inside a transaction as PostgreSQL does, so a failed step rolls back.
"""

from __future__ import annotations

import sqlite3

from control.errors import FoundryError

Step = tuple[str, ...]

MIGRATIONS: tuple[Step, ...] = (
    # 1: the schema as it stood when versioning began (IF NOT EXISTS: see the rules above)
    (
        """CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
  hash TEXT NOT NULL, apps TEXT, node TEXT, expires_at REAL, uses_left INTEGER,
  created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, label TEXT)""",
        """CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY,
  started INTEGER NOT NULL DEFAULT 1, release INTEGER NOT NULL DEFAULT 0,
  memory_mb INTEGER NOT NULL DEFAULT 256, scale TEXT NOT NULL DEFAULT '{}',
  env TEXT NOT NULL DEFAULT '{}', health_check TEXT NOT NULL DEFAULT 'port',
  max_in_flight INTEGER NOT NULL DEFAULT 1, generation INTEGER NOT NULL DEFAULT 0,
  autoscale TEXT, last_cold_start REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS releases (app TEXT NOT NULL, version INTEGER NOT NULL,
  droplet TEXT NOT NULL, env TEXT NOT NULL, processes TEXT NOT NULL, pack TEXT,
  description TEXT, created_at REAL NOT NULL, PRIMARY KEY (app, version))""",
        """CREATE TABLE IF NOT EXISTS builds (id TEXT PRIMARY KEY, app TEXT NOT NULL,
  state TEXT NOT NULL, source TEXT NOT NULL, node TEXT, droplet TEXT, pack TEXT,
  processes TEXT, error TEXT, release INTEGER, created_at REAL NOT NULL, finished_at REAL)""",
        "CREATE INDEX IF NOT EXISTS builds_state ON builds (state)",
        """CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, name TEXT NOT NULL,
  address TEXT NOT NULL, tier TEXT, memory_mb INTEGER NOT NULL, state TEXT NOT NULL,
  last_heartbeat REAL NOT NULL, work_acked INTEGER NOT NULL DEFAULT 0, boot TEXT,
  created_at REAL NOT NULL, seccomp TEXT)""",
        """CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, app TEXT NOT NULL,
  process TEXT NOT NULL, idx INTEGER NOT NULL, release INTEGER NOT NULL, node TEXT NOT NULL,
  state TEXT NOT NULL, stopping INTEGER NOT NULL DEFAULT 0,
  restarts INTEGER NOT NULL DEFAULT 0, since REAL NOT NULL, started_at REAL, port INTEGER,
  address TEXT, reason TEXT, memory_mb INTEGER NOT NULL, work_seq INTEGER NOT NULL DEFAULT 0,
  generation INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS instances_app ON instances (app)",
        """CREATE TABLE IF NOT EXISTS work (seq INTEGER PRIMARY KEY AUTOINCREMENT,
  node TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS work_node ON work (node, seq)",
        """CREATE TABLE IF NOT EXISTS logs (seq INTEGER PRIMARY KEY AUTOINCREMENT,
  app TEXT NOT NULL, ts REAL NOT NULL, source TEXT NOT NULL, build TEXT, line TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS logs_app ON logs (app, seq)",
        """CREATE TABLE IF NOT EXISTS deployments (id INTEGER PRIMARY KEY AUTOINCREMENT,
  app TEXT NOT NULL, from_release INTEGER NOT NULL, to_release INTEGER NOT NULL,
  kind TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL,
  actor TEXT)""",
        "CREATE INDEX IF NOT EXISTS deployments_app ON deployments (app, id)",
        """CREATE TABLE IF NOT EXISTS build_options (build TEXT PRIMARY KEY, app TEXT NOT NULL,
  options TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS routes (host TEXT NOT NULL, path TEXT NOT NULL,
  app TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,
  PRIMARY KEY (host, path))""",
        """CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, app TEXT NOT NULL,
  kind TEXT NOT NULL, command TEXT NOT NULL, state TEXT NOT NULL, node TEXT, build TEXT,
  exit_code INTEGER, reason TEXT, payload TEXT NOT NULL DEFAULT '{}',
  created_at REAL NOT NULL, finished_at REAL)""",
        """CREATE TABLE IF NOT EXISTS file_owners (kind TEXT NOT NULL, digest TEXT NOT NULL,
  app TEXT NOT NULL, PRIMARY KEY (kind, digest, app))""",
        "CREATE INDEX IF NOT EXISTS file_owners_app ON file_owners (app, kind)",
        """CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT,
  ts REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, actor TEXT)""",
    ),
    # 2: builds that no node reports on in time are failed (builds.heard_at: when the
    # build was handed to a node); log batches are stored once
    # however often a node sends them (report_keys: the batches' idempotency keys)
    (
        "ALTER TABLE builds ADD COLUMN heard_at REAL",
        "CREATE TABLE IF NOT EXISTS report_keys (key TEXT PRIMARY KEY, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS report_keys_at ON report_keys (at)",
    ),
)
LATEST = len(MIGRATIONS)

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
    "applied_at REAL NOT NULL)"
)


class SchemaTooNew(FoundryError):
    """The database was written by a newer Foundry than this one."""


def too_new(found: int, known: int, where: str) -> str | None:
    """Why a database at schema version `found` may not be opened, or None."""
    if found <= known:
        return None
    return (
        f"the database {where} has schema version {found}, newer than this Foundry "
        f"knows ({known}): run the Foundry release that last opened it, or a newer one"
    )


def migrate(
    conn: sqlite3.Connection, now: float, where: str, migrations: tuple[Step, ...] = MIGRATIONS
) -> list[int]:
    """Bring the database on `conn` (in autocommit mode) to the last version of
    `migrations`; returns the versions applied now (empty when it was up to date)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(VERSION_TABLE)
        found = int(
            conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        )
        problem = too_new(found, len(migrations), where)
        if problem:
            raise SchemaTooNew(problem)
        if found == 0:
            _bridge_unversioned(conn)
        applied = list(range(found + 1, len(migrations) + 1))
        for version in applied:
            for statement in migrations[version - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", [version, now]
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def _bridge_unversioned(conn: sqlite3.Connection) -> None:
    """Bring a database from before versioning to the schema step 1 describes: the one
    column added back then by hand (nodes.seccomp) may be missing."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(nodes)")}
    if columns and "seccomp" not in columns:
        conn.execute("ALTER TABLE nodes ADD COLUMN seccomp TEXT")
