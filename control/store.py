"""The control plane's store: the only module that knows SQL.

One SQLite database (WAL, synchronous=FULL, so an acknowledged write survives kill -9).
Every change of state calls `changed()`, which bumps an in-memory revision and wakes
waiters through the `on_change` hook the API installs (new log lines use `on_logs`,
so a chatty app does not wake the reconciler);
the revision is not persisted because every long-poll also carries a durable cursor
(work sequence, log sequence, routing etag) that stays valid across restarts.
Each method is one short statement or one short transaction.

Rows go out typed (control/rows.py) and hold Python values: this module alone encodes
and decodes columns (JSON, sealed values, states as control.model's StrEnums). The
schema is control/migrations.py's list of steps, applied when the store is opened.

Columns that can carry config var values (`SEALED`) are stored sealed by control.vault
with keys kept outside the database; they are sealed inside the write transaction, so a
key rotation that drops an unused key (also in a transaction) cannot race a writer still
holding the old key. Opening the store checks that the keyring opens every stored value
and seals rows written before encryption existed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack, cast

import sqlite_utils

from control import vault
from control.bodies import LogLineBody
from control.errors import Conflict, NotFound
from control.migrations import migrate
from control.model import (
    BUILD_ENDED,
    BUILD_TRANSITIONS,
    AppSpec,
    BuildState,
    DeploymentState,
    Instance,
    InstanceState,
    Node,
    NodeState,
    TaskState,
)
from control.rows import (
    AppChanges,
    AppRow,
    AutoscaledApp,
    BuildChanges,
    BuildOptions,
    BuildRow,
    DeploymentRow,
    EventRow,
    InstanceChanges,
    InstanceRow,
    LogRow,
    MappedRoute,
    NodeRow,
    ReleaseRow,
    ReleaseSummary,
    RouteClaim,
    RunningTask,
    TaskData,
    TaskRow,
    TokenRow,
)
from control.wire_edge import RouteOptions
from control.wire_node import (
    LogLine,
    StagePayload,
    StartPayload,
    StopPayload,
    TaskPayload,
    WorkItem,
)

log = logging.getLogger("control.store")

LOG_LINES_KEPT = 2000
REPORT_KEYS_KEPT = 3600.0  # seconds a report's idempotency key is remembered
# table -> the column of it that can hold config var values, stored sealed
SEALED = {"apps": "env", "releases": "env", "work": "payload", "tasks": "payload"}
RESEAL_BATCH = 64


@dataclass(frozen=True)
class Token:
    """An authenticated bearer token (never its secret)."""

    id: str
    kind: str
    apps: tuple[str, ...] | None
    node: str | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """Desired state, releases, builds, nodes, instances, work queues, logs and events."""

    def __init__(
        self, path: Path, clock: Callable[[], float] = time.time, keyring: Path | None = None
    ) -> None:
        """Open the database and its keyring (default: keyring.json beside it)."""
        self.path = path
        self.clock = clock
        vault.create_private(path)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Freed space is zeroed, so a value resealed or deleted leaves no old bytes behind.
        self.db.execute("PRAGMA secure_delete=ON")
        try:
            migrate(conn, self.clock(), str(path))
            self.keyring = self._open_keyring(keyring or vault.keyring_path(path.parent))
            if self.reseal():
                # pre-encryption pages may still hold plaintext in free space and the WAL
                self.db.execute("VACUUM")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException:
            conn.close()
            raise
        self.revision = 0
        self.on_change: Callable[[], None] = lambda: None
        self.on_logs: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.db.conn.close()

    # --- sealed columns -----------------------------------------------------------
    def _seal(self, table: str, data: Any) -> str:
        return self.keyring.seal(json.dumps(data), f"{table}.{SEALED[table]}")

    def _unseal(self, table: str, value: str) -> Any:
        return json.loads(self.keyring.unseal(value, f"{table}.{SEALED[table]}"))

    def sealed_labels(self) -> dict[str, list[tuple[str, int]]]:
        """Each key label stored values name -> (table, rowid) of every such value; label
        "" gathers values not sealed at all (written before encryption existed)."""
        found: dict[str, list[tuple[str, int]]] = {}
        n = len(vault.PREFIX)
        for table, col in SEALED.items():
            for row in self._rows(
                f"SELECT rowid AS id, CASE WHEN substr({col}, 1, {n}) = '{vault.PREFIX}' "
                f"THEN substr({col}, {n + 1}, instr(substr({col}, {n + 1}), ':') - 1) "
                f"ELSE '' END AS label FROM {table}"
            ):
                found.setdefault(row["label"], []).append((table, row["id"]))
        return found

    def _open_keyring(self, path: Path) -> vault.Keyring:
        """Load the keyring and prove it opens one stored value per key it must hold."""
        in_use = self.sealed_labels()
        ring = vault.Keyring.open(path, [label for label in in_use if label])
        for label, rows in in_use.items():
            if label:
                table, rowid = rows[0]
                row = self._one(
                    f"SELECT {SEALED[table]} AS v FROM {table} WHERE rowid = ?", [rowid]
                )
                if row is not None:
                    ring.unseal(row["v"], f"{table}.{SEALED[table]}")
        return ring

    def reseal(self) -> int:
        """Seal every stored value not sealed with the current key (plaintext included);
        returns how many were rewritten. Rows are independent, so stopping between two
        transactions leaves every value readable; a batch per transaction keeps the fsyncs
        few (2,500 rows one by one took 16 s) and the write lock short."""
        current = self.keyring.keys.current
        todo = [
            (table, rowid)
            for label, rows in self.sealed_labels().items()
            if label != current
            for table, rowid in rows
        ]
        done = 0
        for start in range(0, len(todo), RESEAL_BATCH):
            with self._tx():
                for table, rowid in todo[start : start + RESEAL_BATCH]:
                    done += self._reseal_row(table, rowid)
        if done:
            log.info("values-resealed count=%d key=%s", done, current)
        return done

    def _reseal_row(self, table: str, rowid: int) -> int:
        """Reseal one row; called inside a transaction, so nobody rewrites it meanwhile."""
        col = SEALED[table]
        row = self._one(f"SELECT {col} AS v FROM {table} WHERE rowid = ?", [rowid])
        if row is None:
            return 0
        old = row["v"]
        if vault.sealed_label(old) is None:
            try:
                data = json.loads(old)
            except ValueError:
                raise vault.VaultError(
                    f"a value in {table}.{col} is neither sealed nor JSON"
                ) from None
        else:
            data = self._unseal(table, old)
        cur = self.db.execute(
            f"UPDATE {table} SET {col} = ? WHERE rowid = ?", [self._seal(table, data), rowid]
        )
        return int(cur.rowcount)

    def drop_unused_keys(self) -> list[str]:
        """Remove from the keyring every key no stored value names; checked and written
        under the write lock, so no writer can seal with a key being dropped."""
        with self._tx():
            in_use = set(self.sealed_labels())
            unused = sorted(set(self.keyring.keys.keys) - in_use - {self.keyring.keys.current})
            if unused:
                self.keyring.drop(unused)
        return unused

    def changed(self) -> None:
        """Record that desired or actual state changed (the reconciler and long-polls on
        state wake up); log lines wake only log followers (`on_logs`)."""
        self.revision += 1
        self.on_change()

    # Raw rows are plain dicts of column values, seen only inside this module: every
    # public method turns them into control/rows.py's types.
    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, list(params)))

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _tx(self) -> _Transaction:
        return _Transaction(self.db.conn)

    # Plain SQL for writes: sqlite-utils' own writes commit on their own, which would
    # end a surrounding BEGIN IMMEDIATE early.
    def _insert(self, table: str, row: Mapping[str, object]) -> None:
        cols = ", ".join(row)
        self.db.execute(
            f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )

    def _insert_all(self, table: str, rows: list[dict[str, object]]) -> None:
        with self._tx():
            for row in rows:
                self._insert(table, row)

    def _update(self, table: str, key: str, fields: Mapping[str, object]) -> None:
        pk = "name" if table == "apps" else "id"
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE {table} SET {sets} WHERE {pk} = ?", [*fields.values(), key])

    # --- tokens -----------------------------------------------------------------
    def create_token(
        self,
        kind: str,
        *,
        apps: list[str] | None = None,
        node: str | None = None,
        ttl: float | None = None,
        uses: int | None = None,
        label: str | None = None,
    ) -> tuple[str, str]:
        """Mint a token; returns (id, full secret). Only the hash is stored."""
        tid = secrets.token_hex(6)
        secret = f"fdy_{tid}_{secrets.token_urlsafe(24)}"
        self._insert(
            "tokens",
            {
                "id": tid,
                "kind": kind,
                "hash": _hash(secret),
                "apps": json.dumps(apps) if apps is not None else None,
                "node": node,
                "expires_at": self.clock() + ttl if ttl else None,
                "uses_left": uses,
                "created_at": self.clock(),
                "label": label,
            },
        )
        return tid, secret

    def authenticate(self, secret: str) -> Token | None:
        """The token `secret` names, if it is valid now; compared in constant time. A
        token with a use count spends one use on every request it authenticates, for
        every kind: the count is checked and spent in one statement, so two concurrent
        requests cannot share its last use."""
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != "fdy":
            return None
        row = self._one("SELECT * FROM tokens WHERE id = ?", [parts[1]])
        if row is None or not hmac.compare_digest(row["hash"], _hash(secret)):
            return None
        if row["revoked"] or (row["expires_at"] and row["expires_at"] < self.clock()):
            return None
        if row["uses_left"] is not None and not self._spend_use(row["id"]):
            return None
        apps = tuple(json.loads(row["apps"])) if row["apps"] else None
        return Token(row["id"], row["kind"], apps, row["node"])

    def _spend_use(self, tid: str) -> bool:
        """Count one use of a limited token; False when it has none left."""
        cur = self.db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ? AND uses_left > 0", [tid]
        )
        return bool(cur.rowcount)

    def list_tokens(self) -> list[TokenRow]:
        rows = self._rows(
            "SELECT id, kind, apps, node, expires_at, uses_left, created_at, "
            "revoked, label FROM tokens ORDER BY created_at"
        )
        return [
            cast(TokenRow, {**r, "apps": json.loads(r["apps"]) if r["apps"] else None})
            for r in rows
        ]

    def revoke_token(self, tid: str) -> None:
        if self.db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", [tid]).rowcount == 0:
            raise NotFound(f"no token {tid}")

    # --- apps -------------------------------------------------------------------
    def get_app(self, name: str) -> AppRow:
        row = self._one("SELECT * FROM apps WHERE name = ?", [name])
        if row is None:
            raise NotFound(f"no app named {name!r}")
        return cast(
            AppRow,
            {
                **row,
                "scale": json.loads(row["scale"]),
                "env": self._unseal("apps", row["env"]),
                "autoscale": _json_or_none(row["autoscale"]),
            },
        )

    def app_exists(self, name: str) -> bool:
        return self._one("SELECT name FROM apps WHERE name = ?", [name]) is not None

    def list_apps(self) -> list[AppRow]:
        return [self.get_app(r["name"]) for r in self._rows("SELECT name FROM apps ORDER BY name")]

    def autoscale_rows(self) -> list[AutoscaledApp]:
        """Name and autoscale settings of each autoscaled app (no config vars read)."""
        rows = self._rows("SELECT name, autoscale FROM apps WHERE autoscale IS NOT NULL")
        return [{"name": r["name"], "autoscale": json.loads(r["autoscale"])} for r in rows]

    def create_app(
        self,
        name: str,
        *,
        memory_mb: int = 256,
        scale: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        now = self.clock()
        with self._tx():
            self._insert(
                "apps",
                {
                    "name": name,
                    "started": 1,
                    "release": 0,
                    "memory_mb": memory_mb,
                    "scale": json.dumps(scale or {"web": 1}),
                    "env": self._seal("apps", env or {}),
                    "health_check": "port",
                    "created_at": now,
                    "updated_at": now,
                },
            )
        self.changed()

    def update_app(self, name: str, **changes: Unpack[AppChanges]) -> None:
        """Change columns of an app."""
        self.get_app(name)
        fields: dict[str, object] = {**changes, "updated_at": self.clock()}
        if "scale" in changes:
            fields["scale"] = json.dumps(changes["scale"])
        if "autoscale" in changes:
            fields["autoscale"] = _json_or_null(changes["autoscale"])
        with self._tx():
            if "env" in changes:
                fields["env"] = self._seal("apps", changes["env"])
            self._update("apps", name, fields)
        self.changed()

    def delete_app(self, name: str) -> None:
        """Remove an app with its releases, builds, logs and events; instances are stopped
        by the reconciler, which sees them belong to no app."""
        self.get_app(name)
        with self._tx():
            for table in (
                "apps",
                "releases",
                "builds",
                "logs",
                "events",
                "routes",
                "deployments",
                "build_options",
            ):
                key = "name" if table == "apps" else "app"
                self.db.execute(f"DELETE FROM {table} WHERE {key} = ?", [name])
        self.changed()

    def app_specs(self) -> list[AppSpec]:
        """Every app's desired state, joined with its current release's process types."""
        specs = []
        # Named columns, never env: the routing table is built from these on every change,
        # and an app's config must not make that slower.
        for row in self._rows(
            "SELECT a.name, a.started, a.release, a.scale, a.memory_mb, "
            "a.max_in_flight, a.generation, r.processes FROM apps a "
            "LEFT JOIN releases r ON r.app = a.name AND r.version = a.release"
        ):
            specs.append(
                AppSpec(
                    name=row["name"],
                    started=bool(row["started"]),
                    release=row["release"],
                    processes=json.loads(row["processes"] or "{}"),
                    scale=json.loads(row["scale"]),
                    memory_mb=row["memory_mb"],
                    max_in_flight=row["max_in_flight"],
                    generation=row["generation"],
                )
            )
        return specs

    # --- releases ---------------------------------------------------------------
    def create_release(
        self,
        app: str,
        *,
        droplet: str,
        env: dict[str, str],
        processes: dict[str, str],
        pack: str | None,
        description: str,
    ) -> int:
        """Make release v(N+1) of `app` current; returns its version."""
        with self._tx():
            row = self._one(
                "SELECT COALESCE(MAX(version), 0) AS v FROM releases WHERE app = ?", [app]
            )
            version = (row["v"] if row else 0) + 1
            self._insert(
                "releases",
                {
                    "app": app,
                    "version": version,
                    "droplet": droplet,
                    "env": self._seal("releases", env),
                    "processes": json.dumps(processes),
                    "pack": pack,
                    "description": description,
                    "created_at": self.clock(),
                },
            )
            self.db.execute(
                "UPDATE apps SET release = ?, updated_at = ? WHERE name = ?",
                [version, self.clock(), app],
            )
        self.changed()
        return version

    def get_release(self, app: str, version: int) -> ReleaseRow:
        row = self._one("SELECT * FROM releases WHERE app = ? AND version = ?", [app, version])
        if row is None:
            raise NotFound(f"app {app!r} has no release v{version}")
        return cast(
            ReleaseRow,
            {
                **row,
                "env": self._unseal("releases", row["env"]),
                "processes": json.loads(row["processes"]),
            },
        )

    def list_releases(self, app: str) -> list[ReleaseSummary]:
        rows = self._rows(
            "SELECT app, version, droplet, pack, processes, description, created_at "
            "FROM releases WHERE app = ? ORDER BY version DESC",
            [app],
        )
        return [cast(ReleaseSummary, {**r, "processes": json.loads(r["processes"])}) for r in rows]

    # --- builds -----------------------------------------------------------------
    def create_build(self, app: str, source: str, options: BuildOptions | None = None) -> str:
        """Queue a build; `options` (buildpack, no_cache, processes) travel to the stager."""
        bid = "b-" + uuid.uuid4().hex[:12]
        with self._tx():
            self._insert(
                "builds",
                {
                    "id": bid,
                    "app": app,
                    "state": BuildState.QUEUED,
                    "source": source,
                    "created_at": self.clock(),
                },
            )
            if options:
                self._insert(
                    "build_options", {"build": bid, "app": app, "options": json.dumps(options)}
                )
        self.changed()
        return bid

    def build_options(self, bid: str) -> BuildOptions:
        row = self._one("SELECT options FROM build_options WHERE build = ?", [bid])
        return cast(BuildOptions, json.loads(row["options"])) if row else {}

    def get_build(self, bid: str) -> BuildRow:
        row = self._one("SELECT * FROM builds WHERE id = ?", [bid])
        if row is None:
            raise NotFound(f"no build {bid}")
        return _build(row)

    def builds_of_release(self, app: str, version: int) -> list[BuildRow]:
        """The staged builds whose outcome was release `version` of `app`."""
        return [
            _build(r)
            for r in self._rows(
                "SELECT * FROM builds WHERE app = ? AND release = ? AND state = ?",
                [app, version, BuildState.STAGED],
            )
        ]

    def builds_in(self, state: BuildState) -> list[BuildRow]:
        return [
            _build(r)
            for r in self._rows("SELECT * FROM builds WHERE state = ? ORDER BY created_at", [state])
        ]

    def set_build(self, bid: str, state: BuildState, **changes: Unpack[BuildChanges]) -> None:
        """Move a build to `state`, refusing transitions the lifecycle does not allow."""
        current = self.get_build(bid)["state"]
        if state not in BUILD_TRANSITIONS[current]:
            raise Conflict(f"build {bid} is {current}, cannot become {state}")
        fields: dict[str, object] = {"state": state, **changes}
        if state == BuildState.STAGING:  # handed to a node: its time to report starts now
            fields["heard_at"] = self.clock()
        if "processes" in changes:
            fields["processes"] = json.dumps(changes["processes"])
        if state in BUILD_ENDED:
            fields["finished_at"] = self.clock()
        self._update("builds", bid, fields)
        self.changed()

    # --- nodes ------------------------------------------------------------------
    def add_node(
        self, name: str, address: str, memory_mb: int, tier: str | None, seccomp: str | None = None
    ) -> str:
        nid = "n-" + uuid.uuid4().hex[:10]
        now = self.clock()
        self._insert(
            "nodes",
            {
                "id": nid,
                "name": name,
                "address": address,
                "tier": tier,
                "seccomp": seccomp,
                "memory_mb": memory_mb,
                "state": NodeState.READY,
                "last_heartbeat": now,
                "created_at": now,
            },
        )
        self.changed()
        return nid

    def get_node(self, nid: str) -> NodeRow:
        """A node by id, or by name when the name is unique."""
        row = self._one("SELECT * FROM nodes WHERE id = ?", [nid])
        if row is None:
            named = self._rows("SELECT * FROM nodes WHERE name = ?", [nid])
            row = named[0] if len(named) == 1 else None
        if row is None:
            raise NotFound(f"no node {nid}")
        return _node(row)

    def node_rows(self) -> list[NodeRow]:
        return [_node(r) for r in self._rows("SELECT * FROM nodes ORDER BY name")]

    def nodes(self) -> list[Node]:
        return [
            Node(r["id"], r["name"], r["memory_mb"], r["last_heartbeat"], r["state"], r["address"])
            for r in self.node_rows()
        ]

    def touch_node(
        self,
        nid: str,
        *,
        address: str,
        memory_mb: int,
        tier: str | None,
        boot: str,
        seccomp: str | None = None,
    ) -> NodeRow:
        """Record a heartbeat; a lost node that speaks again is ready again. Returns the
        node row as it was before."""
        before = self.get_node(nid)
        state = NodeState.READY if before["state"] == NodeState.LOST else before["state"]
        self._update(
            "nodes",
            nid,
            {
                "address": address,
                "memory_mb": memory_mb,
                "tier": tier,
                "seccomp": seccomp,
                "last_heartbeat": self.clock(),
                "state": state,
                "boot": boot,
            },
        )
        if (before["state"], before["memory_mb"], before["address"]) != (state, memory_mb, address):
            self.changed()
        return before

    def set_node_state(self, nid: str, state: NodeState) -> None:
        self._update("nodes", nid, {"state": state})
        self.changed()

    def remove_node(self, nid: str) -> None:
        """Forget a node in one transaction: its row, instance rows and queued work go,
        and its tokens are revoked so it cannot heartbeat its way back in."""
        with self._tx():
            self.db.execute("UPDATE tokens SET revoked = 1 WHERE kind = 'node' AND node = ?", [nid])
            self.db.execute("DELETE FROM work WHERE node = ?", [nid])
            self.db.execute("DELETE FROM instances WHERE node = ?", [nid])
            self.db.execute("DELETE FROM nodes WHERE id = ?", [nid])
        self.changed()

    # --- instances --------------------------------------------------------------
    def add_instance(
        self,
        *,
        app: str,
        process: str,
        index: int,
        release: int,
        node: str,
        memory_mb: int,
        restarts: int,
        work_seq: int,
        iid: str,
        generation: int = 0,
    ) -> None:
        self._insert(
            "instances",
            {
                "id": iid,
                "app": app,
                "process": process,
                "idx": index,
                "release": release,
                "node": node,
                "state": InstanceState.STARTING,
                "restarts": restarts,
                "since": self.clock(),
                "memory_mb": memory_mb,
                "work_seq": work_seq,
                "generation": generation,
            },
        )
        self.changed()

    def instance_rows(self, app: str | None = None, node: str | None = None) -> list[InstanceRow]:
        where, params = [], []
        if app is not None:
            where.append("app = ?")
            params.append(app)
        if node is not None:
            where.append("node = ?")
            params.append(node)
        sql = "SELECT * FROM instances" + (" WHERE " + " AND ".join(where) if where else "")
        return [
            cast(InstanceRow, {**r, "state": InstanceState(r["state"])})
            for r in self._rows(sql + " ORDER BY app, process, idx, since", params)
        ]

    def instances(self) -> list[Instance]:
        return [
            Instance(
                r["id"],
                r["app"],
                r["process"],
                r["idx"],
                r["release"],
                r["node"],
                r["state"],
                bool(r["stopping"]),
                r["restarts"],
                r["since"],
                r["memory_mb"],
                r["generation"],
            )
            for r in self.instance_rows()
        ]

    def update_instance(self, iid: str, **changes: Unpack[InstanceChanges]) -> None:
        self._update("instances", iid, changes)
        self.changed()

    def forget_instances(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            marks = ",".join("?" * len(ids))
            self.db.execute(f"DELETE FROM instances WHERE id IN ({marks})", ids)
            self.changed()

    # --- work queues ------------------------------------------------------------
    def enqueue(
        self, node: str, kind: str, payload: StagePayload | StartPayload | StopPayload | TaskPayload
    ) -> int:
        """Append a work item to a node's queue; returns its sequence number."""
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO work (node, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                [node, kind, self._seal("work", payload), self.clock()],
            )
        self.changed()
        return int(cur.lastrowid or 0)

    def work_after(self, node: str, after: int, limit: int = 100) -> list[WorkItem]:
        """A node's queued items after `after`: each its payload with `seq` and `kind`."""
        rows = self._rows(
            "SELECT seq, kind, payload FROM work WHERE node = ? AND seq > ? ORDER BY seq LIMIT ?",
            [node, after, limit],
        )
        return [
            cast(
                WorkItem, {"seq": r["seq"], "kind": r["kind"], **self._unseal("work", r["payload"])}
            )
            for r in rows
        ]

    def ack_work(self, node: str, upto: int) -> None:
        """Drop work items the node has confirmed it received."""
        self.db.execute("DELETE FROM work WHERE node = ? AND seq <= ?", [node, upto])

    # --- logs and events --------------------------------------------------------
    def append_logs(self, records: Iterable[LogLine | LogLineBody], key: str | None = None) -> bool:
        """Append log lines [{app, source, line, ts?, build?}] and keep each app's tail
        bounded. A batch sent with a `key` is stored once: the same key again (a retry
        whose first answer was lost) stores nothing and returns False."""
        known = {r["name"] for r in self._rows("SELECT name FROM apps")}
        rows: list[dict[str, object]] = [
            {
                "app": r["app"],
                "ts": r.get("ts") or self.clock(),
                "source": r["source"],
                "build": r.get("build"),
                "line": r["line"],
            }
            for r in records
            if r["app"] in known
        ]
        with self._tx():
            if key is not None and not self._claim_report_key(key):
                return False
            for row in rows:
                self._insert("logs", row)
            for app in {r["app"] for r in rows}:
                self.db.execute(
                    "DELETE FROM logs WHERE app = ? AND seq <= (SELECT MAX(seq) FROM logs "
                    "WHERE app = ?) - ?",
                    [app, app, LOG_LINES_KEPT * 4],
                )
        if rows:
            self.on_logs()
        return True

    def _claim_report_key(self, key: str) -> bool:
        """Record a report's idempotency key (inside a transaction); False when it was
        seen already. Keys older than REPORT_KEYS_KEPT seconds are forgotten: a retry
        comes within minutes."""
        now = self.clock()
        self.db.execute("DELETE FROM report_keys WHERE at < ?", [now - REPORT_KEYS_KEPT])
        cur = self.db.execute(
            "INSERT OR IGNORE INTO report_keys (key, at) VALUES (?, ?)", [key, now]
        )
        return bool(cur.rowcount)

    def read_logs(
        self, app: str, *, after: int | None, limit: int, build: str | None = None
    ) -> list[LogRow]:
        """Lines after `after`; with `after=None`, the last `limit` lines."""
        cond, params = "app = ?", [app]
        if build is not None:
            cond += " AND build = ?"
            params.append(build)
        if after is None:
            rows = self._rows(
                f"SELECT seq, ts, source, line FROM logs WHERE {cond} ORDER BY seq DESC LIMIT ?",
                [*params, limit],
            )[::-1]
        else:
            rows = self._rows(
                f"SELECT seq, ts, source, line FROM logs WHERE {cond} AND seq > ? "
                "ORDER BY seq LIMIT ?",
                [*params, after, limit],
            )
        return cast(list[LogRow], rows)

    # --- routes -----------------------------------------------------------------
    def mapped_routes(self, app: str | None = None) -> list[MappedRoute]:
        """Routes added with map-route (each app's default route is implicit)."""
        sql = "SELECT host, path, app, options FROM routes"
        rows = self._rows(
            sql + (" WHERE app = ?" if app else "") + " ORDER BY host, path", [app] if app else []
        )
        return [cast(MappedRoute, {**r, "options": json.loads(r["options"])}) for r in rows]

    def map_route(self, app: str, host: str, path: str, options: RouteOptions) -> None:
        row = self._one("SELECT app FROM routes WHERE host = ? AND path = ?", [host, path])
        if row is not None and row["app"] != app:
            raise Conflict(f"{host}{path} is already routed to another app")
        # A re-map changes options only: the first claim's time orders a host's owners.
        self.db.execute(
            "INSERT INTO routes (host, path, app, options, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, path) DO UPDATE SET "
            "options = excluded.options",
            [host, path, app, json.dumps(options), self.clock()],
        )
        self.changed()

    def unmap_route(self, app: str, host: str, path: str) -> None:
        cur = self.db.execute(
            "DELETE FROM routes WHERE app = ? AND host = ? AND path = ?", [app, host, path]
        )
        if not cur.rowcount:
            raise NotFound(f"{host}{path} is not routed to {app}")
        self.changed()

    def routes_on_host(self, host: str) -> list[RouteClaim]:
        """The mapped routes under one host, with when each was first mapped."""
        return cast(
            list[RouteClaim],
            self._rows("SELECT host, path, app, created_at FROM routes WHERE host = ?", [host]),
        )

    # --- file ownership (which apps uploaded or reference a stored file) -----------
    def own_files(self, app: str, kind: str, digests: Iterable[str]) -> None:
        """Record that `app` uploaded (or its source references) these files."""
        with self._tx():
            for digest in set(digests):
                self.db.execute(
                    "INSERT OR IGNORE INTO file_owners (kind, digest, app) VALUES (?, ?, ?)",
                    [kind, digest, app],
                )

    def owned_files(
        self, kind: str, digests: Iterable[str], apps: Iterable[str] | None
    ) -> set[str]:
        """Those of `digests` owned by any of `apps` (by any app when None)."""
        wanted = sorted(set(digests))
        scope = None if apps is None else sorted(set(apps))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            sql = (
                f"SELECT DISTINCT digest FROM file_owners WHERE kind = ? AND digest IN "
                f"({','.join('?' * len(chunk))})"
            )
            params: list[Any] = [kind, *chunk]
            if scope is not None:
                sql += f" AND app IN ({','.join('?' * len(scope))})"
                params += scope
            found.update(r["digest"] for r in self._rows(sql, params))
        return found

    def replace_owned_files(self, app: str, kind: str, digests: Iterable[str]) -> list[str]:
        """Make `digests` the whole set of files `app` owns; returns the files it gave up
        that no app owns any more (the caller deletes them)."""
        keep = set(digests)
        with self._tx():
            before = {
                r["digest"]
                for r in self._rows(
                    "SELECT digest FROM file_owners WHERE app = ? AND kind = ?", [app, kind]
                )
            }
            dropped = sorted(before - keep)
            for digest in dropped:
                self.db.execute(
                    "DELETE FROM file_owners WHERE kind = ? AND digest = ? AND app = ?",
                    [kind, digest, app],
                )
            for digest in keep - before:
                self.db.execute(
                    "INSERT INTO file_owners (kind, digest, app) VALUES (?, ?, ?)",
                    [kind, digest, app],
                )
            orphans = [
                d
                for d in dropped
                if self._one(
                    "SELECT 1 AS x FROM file_owners WHERE kind = ? AND digest = ?", [kind, d]
                )
                is None
            ]
        return orphans

    # --- tasks --------------------------------------------------------------------
    def create_task(
        self,
        app: str,
        kind: str,
        command: str,
        node: str,
        build: str | None = None,
        payload: TaskData | None = None,
    ) -> str:
        tid = "t-" + uuid.uuid4().hex[:12]
        with self._tx():
            self._insert(
                "tasks",
                {
                    "id": tid,
                    "app": app,
                    "kind": kind,
                    "command": command,
                    "state": TaskState.RUNNING,
                    "node": node,
                    "build": build,
                    "payload": self._seal("tasks", payload or {}),
                    "created_at": self.clock(),
                },
            )
        self.changed()
        return tid

    def get_task(self, tid: str) -> TaskRow:
        row = self._one("SELECT * FROM tasks WHERE id = ?", [tid])
        if row is None:
            raise NotFound(f"no task {tid}")
        return cast(
            TaskRow,
            {
                **row,
                "state": TaskState(row["state"]),
                "payload": self._unseal("tasks", row["payload"]),
            },
        )

    def release_phase_of(self, build: str) -> TaskRow | None:
        """The release-phase task a build's result started, if it started one."""
        row = self._one(
            "SELECT id FROM tasks WHERE build = ? AND kind = 'release' "
            "ORDER BY created_at DESC LIMIT 1",
            [build],
        )
        return None if row is None else self.get_task(row["id"])

    def running_tasks(self) -> list[RunningTask]:
        return cast(
            list[RunningTask],
            self._rows(
                "SELECT id, node, kind, created_at FROM tasks WHERE state = ?", [TaskState.RUNNING]
            ),
        )

    def finish_task(self, tid: str, exit_code: int | None, reason: str | None) -> None:
        state = TaskState.SUCCEEDED if exit_code == 0 else TaskState.FAILED
        cur = self.db.execute(
            "UPDATE tasks SET state = ?, exit_code = ?, reason = ?, "
            "finished_at = ? WHERE id = ? AND state = ?",
            [state, exit_code, reason, self.clock(), tid, TaskState.RUNNING],
        )
        if not cur.rowcount:
            raise Conflict(f"task {tid} has already ended")
        self.changed()

    # --- deployments ------------------------------------------------------------
    def start_deployment(
        self, app: str, from_release: int, to_release: int, kind: str, actor: str | None
    ) -> int:
        """Record a rollout; an unfinished earlier one of the same app is superseded."""
        with self._tx():
            self.db.execute(
                "UPDATE deployments SET state = ?, finished_at = ? WHERE app = ? AND state = ?",
                [DeploymentState.SUPERSEDED, self.clock(), app, DeploymentState.RUNNING],
            )
            cur = self.db.execute(
                "INSERT INTO deployments (app, from_release, to_release, kind, state, "
                "created_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [app, from_release, to_release, kind, DeploymentState.RUNNING, self.clock(), actor],
            )
        self.changed()
        return int(cur.lastrowid or 0)

    def deployments(self, app: str | None = None, running: bool = False) -> list[DeploymentRow]:
        where, params = [], []
        if app is not None:
            where.append("app = ?")
            params.append(app)
        if running:
            where.append("state = ?")
            params.append(DeploymentState.RUNNING)
        sql = "SELECT * FROM deployments" + (" WHERE " + " AND ".join(where) if where else "")
        return [
            cast(DeploymentRow, {**r, "state": DeploymentState(r["state"])})
            for r in self._rows(sql + " ORDER BY id DESC LIMIT 50", params)
        ]

    def finish_deployment(self, did: int, state: DeploymentState) -> None:
        self.db.execute(
            "UPDATE deployments SET state = ?, finished_at = ? WHERE id = ?",
            [state, self.clock(), did],
        )
        self.changed()

    def droplets_in_use(self, keep: int) -> tuple[set[str], set[str]]:
        """(droplets of each app's newest `keep` releases, droplets of all older releases)."""
        rows = self._rows("SELECT app, version, droplet FROM releases ORDER BY app, version DESC")
        kept: set[str] = set()
        older: set[str] = set()
        seen: dict[str, int] = {}
        for row in rows:
            seen[row["app"]] = seen.get(row["app"], 0) + 1
            (kept if seen[row["app"]] <= keep else older).add(row["droplet"])
        return kept, older

    def grace_nodes(self) -> None:
        """After a control-plane restart, give every node a full TTL to be heard from again:
        the control plane's own absence is not the nodes' silence."""
        self.db.execute(
            "UPDATE nodes SET last_heartbeat = MAX(last_heartbeat, ?) WHERE state = ?",
            [self.clock(), NodeState.READY],
        )

    def add_event(self, app: str | None, kind: str, detail: str, actor: str | None = None) -> None:
        self._insert(
            "events",
            {"app": app, "ts": self.clock(), "kind": kind, "detail": detail, "actor": actor},
        )

    def list_events(self, app: str, limit: int = 100) -> list[EventRow]:
        rows = self._rows(
            "SELECT e.seq, e.ts, e.kind, e.detail, COALESCE(t.kind || COALESCE(' (' || t.label "
            "|| ')', ''), e.actor, 'platform') AS actor FROM events e LEFT JOIN tokens t "
            "ON t.id = e.actor WHERE e.app = ? ORDER BY e.seq DESC LIMIT ?",
            [app, limit],
        )
        return cast(list[EventRow], rows[::-1])


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text else None


def _json_or_null(value: object) -> str | None:
    return None if value is None else json.dumps(value)


def _build(row: dict[str, Any]) -> BuildRow:
    return cast(
        BuildRow,
        {**row, "state": BuildState(row["state"]), "processes": _json_or_none(row["processes"])},
    )


def _node(row: dict[str, Any]) -> NodeRow:
    return cast(NodeRow, {**row, "state": NodeState(row["state"])})


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK around a block (the connection is in autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
