"""What a node says about its seccomp filter reaches `GET /v1/nodes`: at join, then with
every heartbeat; a database made before the field existed gets its column on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from control.store import Store
from tests.component.conftest import Control


async def test_join_and_heartbeats_report_the_filter(control: Control) -> None:
    r = await control.http.post("/v1/tokens", json={"kind": "join"})
    body = {
        "name": "n1",
        "memory_mb": 1024,
        "address": "127.0.0.1",
        "tier": "full",
        "seccomp": "default-deny-list (70 syscalls, x86_64)",
    }
    async with control.client(r.json()["token"]) as c:
        joined = (await c.post("/v1/nodes/join", json=body)).json()
    [node] = (await control.http.get("/v1/nodes")).json()["nodes"]
    assert node["seccomp"] == "default-deny-list (70 syscalls, x86_64)"
    beat = {
        "address": "127.0.0.1",
        "memory_mb": 1024,
        "tier": "full",
        "instances": [],
        "seccomp": "none: no seccomp filter for riscv64 (only x86_64, aarch64)",
    }
    async with control.client(joined["token"]) as c:
        r = await c.post(f"/v1/nodes/{joined['id']}/heartbeat", json=beat)
        assert r.status_code == 200, r.text
        del beat["seccomp"]  # a node from before the field existed
        assert (await c.post(f"/v1/nodes/{joined['id']}/heartbeat", json=beat)).is_success
    [node] = (await control.http.get("/v1/nodes")).json()["nodes"]
    assert node["seccomp"] is None


async def test_a_database_from_before_the_field_gets_its_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE nodes (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT "
            "NOT NULL, tier TEXT, memory_mb INTEGER NOT NULL, state TEXT NOT NULL, "
            "last_heartbeat REAL NOT NULL, work_acked INTEGER NOT NULL DEFAULT 0, "
            "boot TEXT, created_at REAL NOT NULL)"
        )
    db.close()
    store = Store(path)
    try:
        nid = store.add_node("old", "127.0.0.1", 512, "full", "default-deny-list (1 syscalls)")
        store.touch_node(
            nid,
            address="127.0.0.1",
            memory_mb=512,
            tier="full",
            boot="b",
            seccomp="default-deny-list (2 syscalls)",
        )
        assert store.get_node(nid)["seccomp"] == "default-deny-list (2 syscalls)"
    finally:
        store.close()
    Store(path).close()  # opening it again adds nothing twice
