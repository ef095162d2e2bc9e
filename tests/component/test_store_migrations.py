"""Opening a store brings its schema to the latest version: a database the control plane
made before migrations were versioned keeps its data, opening twice changes nothing,
a failed step leaves the version where it was, and a database from a newer Foundry is
refused in one line. The old databases are made from the real old schema and rows
(tests/component/fixtures/store_main_*.sql)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from control import rows
from control.migrations import LATEST, MIGRATIONS, SchemaTooNew, migrate
from control.model import DeploymentState, NodeState
from control.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
# The keyring and the deploy token's secret of the database the fixture rows were dumped
# from: throwaway values made for this fixture only.
KEYRING = {
    "current": "k20261130-100122-1b11",
    "keys": {"k20261130-100122-1b11": "Cs3nEd+kvWyFX/0UC8gYtaGV9dlU2Q8Y6sPFpYY6dLw="},
}
DEPLOY_SECRET = "fdy_b3edf846bac9_XKLIwuBpvOSYcKyu0DHdfiTCBf-y5HCv"
ROOT = Path(__file__).parents[2]


def main_database(home: Path, *, data: bool = True) -> Path:
    """A database exactly as the control plane made it before versioned migrations."""
    home.mkdir(exist_ok=True)
    db = home / "foundry.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript((FIXTURES / "store_main_schema.sql").read_text())
    if data:
        conn.executescript((FIXTURES / "store_main_data.sql").read_text())
    conn.close()
    (home / "keyring.json").write_text(json.dumps(KEYRING))
    (home / "keyring.json").chmod(0o600)
    return db


def versions(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        conn.close()


def columns(db: Path) -> dict[str, list[tuple[str, str, int, object, int]]]:
    """Every table's columns (name, type, not null, default, primary key position)."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name != 'schema_version'"
            )
        ]
        return {
            t: [tuple(c[1:]) for c in conn.execute(f"PRAGMA table_info({t})")]
            for t in sorted(tables)
        }
    finally:
        conn.close()


def test_a_database_from_before_versioning_keeps_its_data_and_reaches_the_latest(
    tmp_path: Path,
) -> None:
    db = main_database(tmp_path / "home")
    store = Store(db)
    try:
        app = store.get_app("old")
        assert (app["env"], app["scale"], app["release"]) == (
            {"GREETING": "hello from main"},
            {"web": 1},
            1,
        )
        release = store.get_release("old", 1)
        assert (release["env"], release["processes"], release["pack"]) == (
            {"GREETING": "hello from main"},
            {"web": "python app.py"},
            "python",
        )
        token = store.authenticate(DEPLOY_SECRET)
        assert token is not None
        assert (token.kind, token.apps) == ("deploy", ("old",))
        assert [(t["label"], t["apps"]) for t in store.list_tokens()] == [("ci", ["old"])]
        [node] = store.node_rows()
        assert (node["name"], node["state"], node["seccomp"]) == ("n1", NodeState.READY, "strict")
        [deployment] = store.deployments("old")
        assert deployment["state"] is DeploymentState.RUNNING
    finally:
        store.close()
    assert versions(db) == list(range(1, LATEST + 1))


def test_the_first_step_is_the_schema_databases_were_made_with(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    conn = sqlite3.connect(fresh, isolation_level=None)
    try:
        migrate(conn, 0.0, str(fresh), MIGRATIONS[:1])  # the later steps change it on purpose
    finally:
        conn.close()
    old = main_database(tmp_path / "old", data=False)
    assert columns(fresh) == columns(old)


def test_opening_twice_changes_nothing(tmp_path: Path) -> None:
    db = main_database(tmp_path / "home")
    Store(db).close()
    schema = columns(db)
    Store(db).close()
    assert versions(db) == list(range(1, LATEST + 1))
    assert columns(db) == schema
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert migrate(conn, 0.0, str(db)) == []
    finally:
        conn.close()


def test_a_later_step_applies_on_top_and_a_failing_one_leaves_the_version(tmp_path: Path) -> None:
    db = tmp_path / "foundry.db"
    Store(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        broken = (
            *MIGRATIONS,
            ("ALTER TABLE apps ADD COLUMN colour TEXT", "INSERT INTO no_such_table VALUES (1)"),
        )
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, 0.0, str(db), broken)
        assert versions(db) == list(range(1, LATEST + 1))
        assert "colour" not in [c[0] for c in columns(db)["apps"]]  # rolled back
        fixed = (*MIGRATIONS, ("ALTER TABLE apps ADD COLUMN colour TEXT",))
        assert migrate(conn, 0.0, str(db), fixed) == [LATEST + 1]
        assert "colour" in [c[0] for c in columns(db)["apps"]]
    finally:
        conn.close()


def test_a_database_from_before_the_seccomp_column_gets_it(tmp_path: Path) -> None:
    db = main_database(tmp_path / "home")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE nodes DROP COLUMN seccomp")
    conn.close()
    store = Store(db)
    try:
        [node] = store.node_rows()
        assert node["seccomp"] is None
        assert node["name"] == "n1"
    finally:
        store.close()


def future(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", [LATEST + 1])
    conn.close()


def test_a_database_from_a_newer_foundry_is_refused(tmp_path: Path) -> None:
    db = main_database(tmp_path / "home")
    Store(db).close()
    future(db)
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew) as refused:
        Store(db)
    assert f"schema version {LATEST + 1}, newer than this Foundry knows ({LATEST})" in str(
        refused.value
    )
    assert db.read_bytes() == before


def test_the_cli_refuses_a_newer_database_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = main_database(home)
    Store(db).close()
    future(db)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "foundry",
            "rotate-key",
            "--home",
            str(home),
            "--keyring",
            str(home / "keyring.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"foundry: the database {db} has schema version {LATEST + 1}, newer than this "
        f"Foundry knows ({LATEST}): run the Foundry release that last opened it, or a "
        "newer one"
    ]


FULL_ROWS: dict[str, tuple[type, frozenset[str]]] = {
    # table: (its row type, columns the store never hands out)
    "tokens": (rows.TokenRow, frozenset({"hash"})),
    "apps": (rows.AppRow, frozenset()),
    "releases": (rows.ReleaseRow, frozenset()),
    "builds": (rows.BuildRow, frozenset()),
    "nodes": (rows.NodeRow, frozenset()),
    "instances": (rows.InstanceRow, frozenset()),
    "tasks": (rows.TaskRow, frozenset()),
    "deployments": (rows.DeploymentRow, frozenset()),
}


@pytest.mark.parametrize("table", sorted(FULL_ROWS))
def test_each_row_type_names_exactly_its_tables_columns(tmp_path: Path, table: str) -> None:
    db = tmp_path / "foundry.db"
    Store(db).close()
    row_type, hidden = FULL_ROWS[table]
    declared = set(typing.get_type_hints(row_type))
    assert declared == {c[0] for c in columns(db)[table]} - hidden
