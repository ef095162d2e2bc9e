"""What the CLI shows of the control API's answers, as pure functions of them.

Rules kept here:
  * A listing is a `Columns` table: header -> the cell of one row of the API's JSON; the
    CLI renders every listing (and --json, which is the API's answer as it is) with one
    helper. A cell of None shows as "-".
  * Times are shown in local time; durations as 1m05s or 2h03m.
  * Nothing here prints or calls the API; the time `now` is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

Row = dict[str, Any]
Columns = dict[str, Callable[[Any], Any]]


def fields(spec: str) -> Columns:
    """Columns that show a row's field as it is: "HEADER=field ..."."""
    pairs = (item.split("=") for item in spec.split())
    return {header.replace("_", " "): itemgetter(field) for header, field in pairs}


def human_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def shown_url(view: Row) -> str:
    """An app's URL as listings show it: "-" for an app the edge has no route for (a
    release without a web process, as control/routing.py decides)."""
    return str(view["url"]) if view["release"] == 0 or "web" in view["processes"] else "-"


def running(a: Row) -> str:
    """RUNNING of `foundry apps`: instances running / instances wanted."""
    up = sum(1 for i in a["instances"] if i["state"] == "RUNNING")
    return f"{up}/{sum(a['scale'].get(p, 1) for p in a['processes'] if p != 'release')}"


BUILDPACKS = fields("POSITION=position NAME=name")
APPS: Columns = {
    "NAME": itemgetter("name"),
    "STATE": itemgetter("state"),
    "RELEASE": lambda a: f"v{a['release']}" if a["release"] else "-",
    "RUNNING": running,
    "URL": shown_url,
}
INSTANCES: Columns = {
    "INSTANCE": lambda i: f"{i['process']}.{i['index']}",
    "STATE": itemgetter("state"),
    "RELEASE": lambda i: f"v{i['release']}",
    **fields("NODE=node PORT=port"),
    "UPTIME": lambda i: human_duration(i["uptime"]),
    **fields("RESTARTS=restarts REASON=reason"),
}
DEPLOYMENTS: Columns = {
    **fields("ID=id KIND=kind"),
    "RELEASES": lambda r: f"v{r['from_release']} -> v{r['to_release']}",
    "STATE": itemgetter("state"),
    "PROGRESS": lambda r: f"{r['updated']}/{r['wanted']}" if "updated" in r else None,
    "STARTED": lambda r: stamp(r["created_at"]),
}
RELEASES: Columns = {
    "RELEASE": lambda r: f"v{r['version']}",
    "PACK": itemgetter("pack"),
    "DROPLET": lambda r: r["droplet"][:12],
    "DESCRIPTION": itemgetter("description"),
    "CREATED": lambda r: stamp(r["created_at"]),
}
EVENTS: Columns = {
    "TIME": lambda r: stamp(r["ts"]),
    **fields("EVENT=kind BY=actor DETAIL=detail"),
}
ROUTES: Columns = {
    **fields("HOST=host PATH=path APP=app"),
    "BACKENDS": lambda r: len(r["backends"]),
    "OPTIONS": lambda r: (
        ",".join(f"{k}={v}" for k, v in sorted(r.get("options", {}).items())) or None
    ),
}


def disk(node: Row) -> str | None:
    """`disk full` for a node that says so, else its free space as it last reported."""
    if node.get("disk_full"):
        return "disk full"
    free = node.get("disk_free")
    return None if free is None else f"{free >> 20}M free"


def nodes(now: float) -> Columns:
    return {
        **fields("NAME=name ID=id STATE=state TIER=tier"),
        "SECCOMP": lambda n: n.get("seccomp"),
        "ADDRESS": itemgetter("address"),
        "MEMORY": lambda n: f"{n['used_mb']}/{n['memory_mb']}M",
        "INSTANCES": itemgetter("instances"),
        "DISK": disk,
        "HEARTBEAT": lambda n: f"{now - n['last_heartbeat']:.0f}s ago",
    }


def tokens(now: float) -> Columns:
    def state(t: Row) -> str:
        expired = t["expires_at"] and t["expires_at"] < now
        return "revoked" if t["revoked"] else "expired" if expired else "active"

    def expires_in(t: Row) -> str | None:
        live = t["expires_at"] and t["expires_at"] > now
        return human_duration(t["expires_at"] - now) if live else None

    return {
        **fields("ID=id KIND=kind"),
        "APPS": lambda t: ",".join(t["apps"]) if t["apps"] else "all",
        "STATE": state,
        "EXPIRES IN": expires_in,
        **fields("USES_LEFT=uses_left NODE=node LABEL=label"),
    }


def table(rows: list[Row], columns: Columns) -> list[str]:
    """The rows as aligned text lines under the columns' headers."""
    cells = [list(columns)] + [
        ["-" if c is None else str(c) for c in (cell(r) for cell in columns.values())] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def app_lines(view: Row) -> list[str]:
    """`foundry app`'s summary above its instance table."""
    release = f"v{view['release']}" if view["release"] else "none"
    url = shown_url(view) if shown_url(view) != "-" else "no route (no web process)"
    scale = ", ".join(f"{p}={view['scale'].get(p, 1)}" for p in view["processes"])
    lines = [
        f"{view['name']}  {view['state']}  release {release}  memory {view['memory_mb']}M  {url}",
        "scale: " + (scale or "no processes"),
    ]
    if view.get("autoscale"):
        a, cold = view["autoscale"], view.get("last_cold_start")
        lines.append(
            f"autoscale: web {a['min']}..{a['max']}, {a['concurrency']} in flight per "
            f"instance, idle {a['idle']:.0f} s; last cold start: "
            + (f"{cold * 1000:.0f} ms" if cold is not None else "none yet")
        )
    return lines


def log_line(line: Row) -> str:
    stamp_ = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line["ts"]))
    return f"{stamp_} [{line['source']}] {line['line']}"


def env_change_line(
    name: str, verb: str, keys: list[str], unchanged: list[str], why_one: str, why_many: str
) -> str:
    """What a config change did: the keys it changed, and those it left as they were."""
    idle = [k for k in dict.fromkeys(keys) if k in unchanged]
    changed = [k for k in dict.fromkeys(keys) if k not in unchanged]
    why = f"{', '.join(idle)} {why_one if len(idle) == 1 else why_many}"
    if not changed:
        return f"{name}: {why}; nothing changed"
    return f"{name}: {verb} {', '.join(changed)}" + (f" ({why})" if idle else "")
