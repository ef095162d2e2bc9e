"""What every API request body (and numeric or enum query parameter) must be: one table.

Each body is a TypedDict (what its handler reads) and the spec `control.schema` checks
it against, side by side; `control.api.BODIES` says which route takes which. Caps here
bound each value on its own; totals that depend on configuration (an app's config
size, files per push) are the handlers' and control/limits.py's to check.

Messages from other roles (node agents, edges) drop keys they do not know, so a newer
node still talks to this control plane; user requests refuse them (a misspelt field
must not be silently ignored).
"""

# No `from __future__ import annotations`: schema.Body reads the TypedDicts' required
# keys, which Python 3.11 loses from postponed annotations.

import re
from typing import NotRequired, TypedDict

from control.model import InstanceState
from control.names import (
    app_name_problem,
    env_name_problem,
    parse_memory,
    parse_route,
    process_name_problem,
)
from control.schema import (
    Body,
    Bool,
    Int,
    ListOf,
    MapOf,
    Num,
    NumOrText,
    Obj,
    OneOf,
    Parsed,
    Spec,
    Str,
    opt,
    req,
)

_DIGEST = re.compile(r"[0-9a-f]{64}")
KIB, MIB = 1024, 1 << 20
MAX_FILES = 1_000_000  # a sanity cap; ArchiveLimits.max_files is the configured one


def digest_problem(text: str) -> str | None:
    return None if _DIGEST.fullmatch(text) else "must be a sha256 hex digest"


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '7d' -> seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not re.fullmatch(r"[0-9]{1,9}", number) or int(number) == 0:
        raise ValueError(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    return float(int(number) * units[unit])


def parse_health_check(text: str) -> str:
    """`port`, `process`, or `http:/path` (2xx within 1 s)."""
    if text in ("port", "process") or (text.startswith("http:/") and " " not in text):
        return text
    raise ValueError(f"health check {text!r} must be port, process or http:/PATH")


APP = Str(63, problem=app_name_problem)
ENV_NAME = Str(256, problem=env_name_problem)
ENV_VALUE = Str(MIB)  # an app's config is capped as a whole (limits.config_problem)
PROCESS = Str(30, problem=process_name_problem)
DIGEST = Str(64, problem=digest_problem)
PATH = Str(4096)  # resources.path_problem decides what a source path may be
COMMAND = Str(16 * KIB, min_len=1, problem=lambda s: None if s.strip() else "must not be blank")
ROUTE = Parsed(parse_route, max_len=300)
ENV = MapOf(ENV_NAME, ENV_VALUE, max_items=10_000)
RESOURCE = Obj(
    {
        "path": req(PATH),
        "sha256": req(DIGEST),
        "mode": req(Int(0, 0o777)),
        "size": req(Int(0, 1 << 62)),
    }
)
RESOURCES = ListOf(RESOURCE, max_items=MAX_FILES)


# --- users' requests ----------------------------------------------------------------


class ScaleBody(TypedDict):
    process: NotRequired[str]
    instances: NotRequired[int]
    memory: NotRequired[int]  # MiB, from text like 512M
    min: NotRequired[int]
    max: NotRequired[int]
    concurrency: NotRequired[int]
    idle: NotRequired[float]  # seconds, from a number or text like 90s
    window: NotRequired[float]


def _seconds(lo: float, hi: float, what: str) -> NumOrText:
    """Seconds as a number, or a duration like 90s, between `lo` and `hi` (`what`)."""

    def parse(text: str) -> float:
        seconds = parse_duration(text)
        if not lo <= seconds <= hi:
            raise ValueError(f"must be between {what}, got {text!r}")
        return seconds

    return NumOrText(Num(lo, hi), Parsed(parse, max_len=12))


SCALE = Body(
    ScaleBody,
    Obj(
        {
            "process": opt(PROCESS),
            "instances": opt(Int(0, 100)),
            "memory": opt(Parsed(parse_memory, max_len=20)),
            "min": opt(Int(0, 100)),
            "max": opt(Int(1, 100)),
            "concurrency": opt(Int(1, 10_000)),
            "idle": opt(_seconds(1, 86_400, "1 s and 1 day")),
            "window": opt(_seconds(6, 3600, "6 s and 1 h")),
        }
    ),
)


class RestartBody(TypedDict):
    process: NotRequired[str]
    index: NotRequired[int]


RESTART = Body(RestartBody, Obj({"process": opt(PROCESS), "index": opt(Int(0, 100))}))


class EnvBody(TypedDict):
    set: NotRequired[dict[str, str]]
    unset: NotRequired[list[str]]


ENV_CHANGE = Body(EnvBody, Obj({"set": opt(ENV), "unset": opt(ListOf(ENV_NAME, max_items=10_000))}))


class RollbackBody(TypedDict):
    version: int


ROLLBACK = Body(RollbackBody, Obj({"version": req(Int(1, 1 << 30))}))


class MapRouteBody(TypedDict):
    route: tuple[str, str]  # (host, path prefix)
    balance: NotRequired[str]
    timeout: NotRequired[int]
    sticky: NotRequired[bool]


MAP_ROUTE = Body(
    MapRouteBody,
    Obj(
        {
            "route": req(ROUTE),
            "balance": opt(OneOf(("round-robin", "least-in-flight"))),
            "timeout": opt(Int(1, 3600)),
            "sticky": opt(Bool()),
        }
    ),
)


class UnmapRouteBody(TypedDict):
    route: tuple[str, str]


UNMAP_ROUTE = Body(UnmapRouteBody, Obj({"route": req(ROUTE)}))


class TaskBody(TypedDict):
    command: str


TASK = Body(TaskBody, Obj({"command": req(COMMAND)}))

TOKEN_KINDS = ("admin", "deploy", "read", "join", "edge")


class TokenBody(TypedDict):
    kind: str
    apps: NotRequired[list[str]]
    ttl: NotRequired[float]
    uses: NotRequired[int]
    label: NotRequired[str]


TOKEN = Body(
    TokenBody,
    Obj(
        {
            "kind": req(OneOf(TOKEN_KINDS)),
            "apps": opt(ListOf(APP, max_items=1000, min_items=1)),
            "ttl": opt(Parsed(parse_duration, max_len=12)),
            "uses": opt(Int(1, 1 << 30)),
            "label": opt(Str(80)),
        }
    ),
)


class NodeStateBody(TypedDict):
    state: str


NODE_STATE = Body(NodeStateBody, Obj({"state": req(OneOf(("draining", "ready")))}))


class PushConfig(TypedDict):
    """Config vars sent with a push (in a JSON body, or a prefix before the tarball)."""

    env: NotRequired[dict[str, str]]
    replace_env: NotRequired[bool]


PUSH_CONFIG = Body(PushConfig, Obj({"env": opt(ENV), "replace_env": opt(Bool())}))


class PushBody(PushConfig):
    """A push by resource list: the entries, or a listing stored earlier."""

    listing: NotRequired[str]
    resources: NotRequired[list[dict[str, object]]]  # resources.parse_resources reads them


PUSH = Body(
    PushBody,
    Obj(
        {
            "env": opt(ENV),
            "replace_env": opt(Bool()),
            "listing": opt(DIGEST),
            "resources": opt(RESOURCES),
        }
    ),
)


class MatchBody(TypedDict):
    resources: list[dict[str, object]]


MATCH = Body(
    MatchBody,
    Obj(
        {
            "resources": req(
                ListOf(
                    Obj(
                        {
                            "sha256": req(DIGEST),
                            "path": opt(PATH),
                            "mode": opt(Int(0, 0o777)),
                            "size": opt(Int(0, 1 << 62)),
                        }
                    ),
                    max_items=MAX_FILES,
                )
            )
        }
    ),
)


class ListingBody(TypedDict):
    base: NotRequired[str]
    changed: list[dict[str, object]]
    removed: NotRequired[list[str]]


LISTING = Body(
    ListingBody,
    Obj(
        {
            "base": opt(DIGEST),
            "changed": req(RESOURCES),
            "removed": opt(ListOf(PATH, max_items=MAX_FILES)),
        }
    ),
)


# --- other roles' messages ----------------------------------------------------------

NODE_TEXT = Str(200)  # a short descriptive field a node reports (tier, seccomp filter)
REASON = Str(8 * KIB)


class JoinBody(TypedDict):
    name: NotRequired[str]
    address: NotRequired[str]
    memory_mb: int
    tier: NotRequired[str]
    seccomp: NotRequired[str]


JOIN = Body(
    JoinBody,
    Obj(
        {
            "name": opt(Str(253)),
            "address": opt(Str(255)),
            "memory_mb": req(Int(64, 1 << 24)),
            "tier": opt(NODE_TEXT),
            "seccomp": opt(NODE_TEXT),
        },
        extra="ignore",
    ),
)


class InstanceBody(TypedDict):
    id: str
    state: str
    app: NotRequired[str]
    port: NotRequired[int]
    reason: NotRequired[str]
    pid: NotRequired[int]


INSTANCE = Obj(
    {
        "id": req(Str(100)),
        "state": req(OneOf(tuple(InstanceState))),
        "app": opt(Str(63)),
        "port": opt(Int(1, 65535)),
        "reason": opt(REASON),
        "pid": opt(Int(1, 1 << 31)),
    },
    extra="ignore",
)


class HeartbeatBody(TypedDict):
    address: str
    memory_mb: int
    instances: NotRequired[list[InstanceBody]]
    boot: NotRequired[str]
    tier: NotRequired[str]
    seccomp: NotRequired[str]
    work_seq: NotRequired[int]
    disk_free: NotRequired[int]
    disk_full: NotRequired[bool]


HEARTBEAT = Body(
    HeartbeatBody,
    Obj(
        {
            "address": req(Str(255)),
            "memory_mb": req(Int(0, 1 << 24)),
            "instances": opt(ListOf(INSTANCE, max_items=100_000)),
            "boot": opt(Str(100)),
            "tier": opt(NODE_TEXT),
            "seccomp": opt(NODE_TEXT),
            "work_seq": opt(Int(0, 1 << 62)),
            "disk_free": opt(Int(0, 1 << 62)),
            "disk_full": opt(Bool()),
        },
        extra="ignore",
    ),
)


class BuildResultBody(TypedDict):
    ok: bool
    error: NotRequired[str]
    droplet: NotRequired[str]
    processes: NotRequired[dict[str, str]]
    pack: NotRequired[str]


BUILD_RESULT = Body(
    BuildResultBody,
    Obj(
        {
            "ok": req(Bool()),
            "error": opt(REASON),
            "droplet": opt(DIGEST),
            "processes": opt(MapOf(PROCESS, COMMAND, max_items=100)),
            "pack": opt(Str(200)),
        },
        extra="ignore",
    ),
)


class TaskResultBody(TypedDict):
    exit_code: NotRequired[int]  # absent (null): it did not exit by itself
    reason: NotRequired[str]


TASK_RESULT = Body(
    TaskResultBody,
    Obj(
        {"exit_code": opt(Int(-(1 << 31), (1 << 31) - 1)), "reason": opt(REASON)},
        extra="ignore",
    ),
)


class LogLineBody(TypedDict):
    app: str
    source: str
    line: str
    ts: NotRequired[float]
    build: NotRequired[str]


LOG_LINE = Obj(
    {
        "app": req(Str(63)),
        "source": req(Str(100)),
        "line": req(Str(64 * KIB, nul=True)),  # whatever the program printed
        "ts": opt(Num(0, 1e11)),
        "build": opt(Str(100)),
    },
    extra="ignore",
)


class LogsBody(TypedDict):
    lines: list[LogLineBody]


LOGS = Body(LogsBody, Obj({"lines": req(ListOf(LOG_LINE, max_items=100_000))}, extra="ignore"))


class Sample(TypedDict):
    in_flight: NotRequired[float]
    tunnels: NotRequired[int]


class MetricsBody(TypedDict):
    apps: dict[str, Sample]
    reporter: NotRequired[str]


METRICS = Body(
    MetricsBody,
    Obj(
        {
            "apps": req(
                MapOf(
                    Str(63),
                    Obj(
                        {"in_flight": opt(Num(0, 1e9)), "tunnels": opt(Int(0, 1 << 31))},
                        extra="ignore",
                    ),
                    max_items=100_000,
                )
            ),
            "reporter": opt(Str(200)),
        },
        extra="ignore",
    ),
)


# --- query parameters ---------------------------------------------------------------

WAIT = Num(0, 1e9)  # seconds; the control plane caps it at its long-poll maximum
PUSH_QUERY: dict[str, Spec] = {
    "instances": Int(0, 100),
    "memory": Parsed(parse_memory, max_len=20),
    "max_in_flight": Int(1, 100),
    "health_check": Parsed(parse_health_check, max_len=1000),
    "no_cache": OneOf(("0", "1", "true", "false")),
}
EVENTS_LIMIT = Int(1, 10_000)
LOGS_LIMIT = Int(1, 5000)
SEQ = Int(0, 1 << 62)
FLAG = OneOf(("", "0", "1", "true", "false"))
