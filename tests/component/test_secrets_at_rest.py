"""Config vars at rest: sealed in every table that keeps them, readable through the API,
migrated from a home made before encryption, rotated key by key, never served when a
value does not open."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from control.store import Store
from control.vault import Keys, VaultError, render_keyring
from control.wire_node import StartPayload
from tests.component.conftest import Control

# The schema as databases were made before versioned migrations (and before encryption).
MAIN_SCHEMA = Path(__file__).parent / "fixtures" / "store_main_schema.sql"
SECRET = "s3cr3t-zebra-7d1f0c"
DROPLET = "0" * 64


def raw_bytes(db: Path) -> bytes:
    """Everything SQLite keeps on disk for this database: file, WAL and shared memory."""
    return b"".join(
        p.read_bytes()
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    )


def labels(store: Store) -> set[str]:
    return set(store.sealed_labels())


async def test_config_vars_never_reach_the_database_in_the_clear(
    control: Control, tmp_path: Path
) -> None:
    store = control.store
    store.create_app("vaulted")
    store.create_release(
        "vaulted", droplet=DROPLET, env={}, processes={"web": "run"}, pack=None, description="v1"
    )
    r = await control.http.patch("/v1/apps/vaulted/env", json={"set": {"API_KEY": SECRET}})
    assert r.status_code == 200, r.text
    assert r.json()["release"] == 2
    assert (await control.http.get("/v1/apps/vaulted/env")).json()["env"] == {"API_KEY": SECRET}
    assert store.get_release("vaulted", 2)["env"] == {"API_KEY": SECRET}
    store.enqueue(
        "n-1",
        "start",
        StartPayload(
            instance="i-1",
            app="vaulted",
            process="web",
            index=0,
            release=2,
            droplet="d",
            command="run",
            env={"API_KEY": SECRET},
            memory_mb=64,
            health_check="port",
        ),
    )
    assert started_env(store) == {"API_KEY": SECRET}
    tid = store.create_task("vaulted", "run", "true", "n-1", payload={"env": {"API_KEY": SECRET}})
    assert store.get_task(tid)["payload"]["env"] == {"API_KEY": SECRET}

    assert SECRET.encode() not in raw_bytes(tmp_path / "foundry.db")
    assert labels(store) == {store.keyring.keys.current}  # nothing left unsealed
    assert stat.S_IMODE(os.stat(tmp_path / "foundry.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keyring.json").st_mode) == 0o600


async def test_a_value_that_does_not_open_is_a_500_with_a_reason_never_garbage(
    control: Control,
) -> None:
    control.store.create_app("tampered", env={"API_KEY": SECRET})
    value = control.store.db.execute("SELECT env FROM apps WHERE name = 'tampered'").fetchone()[0]
    flipped = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
    control.store.db.execute("UPDATE apps SET env = ? WHERE name = 'tampered'", [flipped])
    r = await control.http.get("/v1/apps/tampered/env")
    assert r.status_code == 500
    assert "does not open" in r.json()["error"]
    assert SECRET not in r.text


def old_home(home: Path) -> Path:
    """A database written by the control plane before config vars were sealed."""
    home.mkdir()
    db = home / "foundry.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA secure_delete=OFF")  # SQLite's own default; Debian's is ON
    conn.executescript(MAIN_SCHEMA.read_text())
    env = json.dumps({"API_KEY": SECRET})
    conn.execute(
        "INSERT INTO apps (name, env, release, created_at, updated_at) VALUES ('old', ?, 1, 0, 0)",
        [env],
    )
    conn.execute(
        "INSERT INTO releases (app, version, droplet, env, processes, created_at) "
        "VALUES ('old', 1, ?, ?, '{\"web\": \"run\"}', 0)",
        [DROPLET, env],
    )
    conn.execute(
        "INSERT INTO work (node, kind, payload, created_at) VALUES ('n-1', 'start', ?, 0)",
        [json.dumps({"env": {"API_KEY": SECRET}})],
    )
    conn.execute(
        "INSERT INTO tasks (id, app, kind, command, state, payload, created_at) "
        "VALUES ('t-1', 'old', 'run', 'true', 'RUNNING', ?, 0)",
        [json.dumps({"env": {"API_KEY": SECRET}})],
    )
    # an app deleted back then leaves its env in free (overflow) pages no row names any more
    conn.execute(
        "INSERT INTO apps (name, env, created_at, updated_at) VALUES ('gone', ?, 0, 0)",
        [json.dumps({"OLD_KEY": "gone-" + SECRET, "PAD": "x" * 9000})],
    )
    conn.execute("DELETE FROM apps WHERE name = 'gone'")
    conn.close()
    assert f"gone-{SECRET}".encode() in raw_bytes(db)
    return db


def started_env(store: Store) -> dict[str, str]:
    """The env of node n-1's first queued item, which the test made a start."""
    item = store.work_after("n-1", 0)[0]
    assert item["kind"] == "start"
    return item["env"]


def test_a_home_from_before_encryption_keeps_working_and_ends_up_sealed(tmp_path: Path) -> None:
    db = old_home(tmp_path / "home")
    store = Store(db)
    try:
        assert store.get_app("old")["env"] == {"API_KEY": SECRET}
        assert store.get_release("old", 1)["env"] == {"API_KEY": SECRET}
        assert started_env(store) == {"API_KEY": SECRET}
        assert store.get_task("t-1")["payload"]["env"] == {"API_KEY": SECRET}
        assert labels(store) == {store.keyring.keys.current}
        assert sum(len(rows) for rows in store.sealed_labels().values()) == 4
    finally:
        store.close()
    assert SECRET.encode() not in raw_bytes(db)


def test_rotation_can_stop_anywhere_and_drops_a_key_only_when_nothing_names_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "foundry.db"
    store = Store(db)
    store.create_app("a", env={"API_KEY": SECRET})
    store.create_release(
        "a", droplet=DROPLET, env={"API_KEY": SECRET}, processes={}, pack=None, description="v1"
    )
    key_a = store.keyring.keys.current
    # the first step of a rotation, then an interruption: old rows stay under key A ...
    key_b = store.keyring.add_current()
    store.create_app("b", env={"API_KEY": "bee"})  # ... new ones use B
    assert labels(store) == {key_a, key_b}
    assert store.drop_unused_keys() == []  # A is still named by values
    assert store.get_app("a")["env"] == {"API_KEY": SECRET}
    store.close()

    store = Store(db)  # opening reseals what the interrupted rotation left
    assert labels(store) == {key_b}
    assert store.drop_unused_keys() == [key_a]
    assert key_a not in store.keyring.keys.keys
    store.close()
    assert f"fdy1:{key_a}:".encode() not in raw_bytes(db)
    assert key_a not in (tmp_path / "keyring.json").read_text()

    store = Store(db)  # key A is gone from the keyring: everything still opens
    try:
        assert store.get_app("a")["env"] == {"API_KEY": SECRET}
        assert store.get_release("a", 1)["env"] == {"API_KEY": SECRET}
        assert store.get_app("b")["env"] == {"API_KEY": "bee"}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("wrong", "does not open with key"),
        ("missing", "keyring .* is missing"),
        ("other-label", "which the keyring .* does not hold"),
    ],
)
def test_a_missing_or_wrong_keyring_refuses_to_open(tmp_path: Path, damage: str, why: str) -> None:
    db = tmp_path / "foundry.db"
    store = Store(db)
    store.create_app("a", env={"API_KEY": SECRET})
    label = store.keyring.keys.current
    store.close()
    ring = tmp_path / "keyring.json"
    if damage == "missing":
        ring.unlink()
    else:
        name = label if damage == "wrong" else "elsewhere"
        ring.write_text(render_keyring(Keys(name, {name: os.urandom(32)})))
    with pytest.raises(VaultError, match=why):
        Store(db)
    assert ring.exists() == (damage != "missing")  # never silently replaced by a new key
