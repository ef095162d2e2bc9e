"""Cloud Foundry `manifest.yml` files: a pure parser into frozen dataclasses, and the
`--strict` diff between what a manifest says and what an app has (every change it makes,
shown before anything is changed; config values never shown, they may be secrets).

Rules kept here:
* `applications[]` lists the apps; every other top-level app attribute is inherited
  by each app, which may override it (`env` merges key by key, the app's value wins).
* An unknown key is a warning naming its path (`applications[0].stack: unknown key,
  ignored`), never a failure: manifests written for Cloud Foundry still push.
* An invalid value raises ManifestError whose message starts with the key's path,
  e.g. `applications[1].memory: 'lots' is not a size like 256M or 1G`.
* `health-check-type: none` is Cloud Foundry's old name for `process`.
No I/O: the caller reads the file and applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from control.names import (
    app_name_problem,
    env_name_problem,
    parse_memory,
    parse_route,
    process_name_problem,
)

HEALTH_CHECK_TYPES = ("port", "http", "process", "none")
COMMON_KEYS = frozenset(
    {
        "instances",
        "memory",
        "disk_quota",
        "command",
        "health-check-type",
        "health-check-http-endpoint",
        "timeout",
    }
)
APP_KEYS = COMMON_KEYS | {
    "name",
    "routes",
    "no-route",
    "random-route",
    "env",
    "buildpack",
    "buildpacks",
    "path",
    "processes",
}
PROCESS_KEYS = COMMON_KEYS | {"type"}
TOP_ONLY_KEYS = frozenset({"applications", "version"})
MAX_INSTANCES = 100
MAX_TIMEOUT = 600


class ManifestError(ValueError):
    """A manifest that cannot be used; the message starts with the key's path."""


@dataclass(frozen=True)
class ProcessManifest:
    """One entry of an app's `processes`."""

    type: str
    instances: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    command: str | None = None
    health_check: str | None = None  # port, process or http:/PATH (Foundry's spelling)
    timeout: int | None = None


@dataclass(frozen=True)
class AppManifest:
    """One application of a manifest, with inherited attributes applied."""

    name: str
    instances: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    routes: tuple[str, ...] = ()
    no_route: bool = False
    random_route: bool = False
    env: dict[str, str] = field(default_factory=dict)
    buildpacks: tuple[str, ...] = ()
    command: str | None = None
    health_check: str | None = None
    timeout: int | None = None
    path: str | None = None
    processes: tuple[ProcessManifest, ...] | None = None  # None: the manifest names none

    def process(self, kind: str) -> ProcessManifest | None:
        return next((p for p in self.processes or () if p.type == kind), None)


@dataclass(frozen=True)
class Manifest:
    applications: tuple[AppManifest, ...]
    warnings: tuple[str, ...] = ()

    def app(self, name: str) -> AppManifest:
        found = next((a for a in self.applications if a.name == name), None)
        if found is None:
            names = ", ".join(a.name for a in self.applications)
            raise ManifestError(f"the manifest has no app {name!r} (it has {names})")
        return found


# --- values ---------------------------------------------------------------------------
def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | str)
        or not str(value).strip().isdigit()
    ):
        raise ManifestError(f"{where}: {value!r} is not a whole number")
    number = int(value)
    if not lo <= number <= hi:
        raise ManifestError(f"{where}: {number} is not between {lo} and {hi}")
    return number


def _size(value: Any, where: str) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{value!r} is not a size like 256M or 1G")
        return parse_memory(str(value))
    except ValueError as e:
        raise ManifestError(f"{where}: {e}") from None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: must be a non-empty string")
    return value.strip()


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ManifestError(f"{where}: {value!r} is not true or false")


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must be a mapping of NAME: value")
    env = {}
    for key, raw in value.items():
        problem = env_name_problem(str(key))
        if problem:
            raise ManifestError(f"{where}.{key}: {problem}")
        if isinstance(raw, bool):
            env[str(key)] = "true" if raw else "false"
        elif isinstance(raw, str | int | float):
            env[str(key)] = str(raw)
        else:
            raise ManifestError(f"{where}.{key}: must be a string, number or boolean")
    return env


def _routes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"{where}: must be a list of {{route: HOST[/PATH]}}")
    routes = []
    for i, entry in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict) or "route" not in entry:
            raise ManifestError(f"{here}: must be a mapping with a route key")
        try:
            host, path = parse_route(_str(entry["route"], f"{here}.route"))
        except ValueError as e:
            raise ManifestError(f"{here}.route: {e}") from None
        routes.append(host + ("" if path == "/" else path))
    return tuple(routes)


def _buildpacks(attrs: dict[str, Any], where: str) -> tuple[str, ...]:
    if "buildpack" in attrs and "buildpacks" in attrs:
        raise ManifestError(f"{where}: use buildpack or buildpacks, not both")
    if "buildpack" in attrs:
        return (_str(attrs["buildpack"], f"{where}.buildpack"),)
    value = attrs.get("buildpacks", [])
    if not isinstance(value, list):
        raise ManifestError(f"{where}.buildpacks: must be a list of names, paths or URLs")
    return tuple(_str(v, f"{where}.buildpacks[{i}]") for i, v in enumerate(value))


def _health_check(attrs: dict[str, Any], where: str) -> str | None:
    kind = attrs.get("health-check-type")
    endpoint = attrs.get("health-check-http-endpoint")
    if kind is None and endpoint is None:
        return None
    kind = "http" if kind is None else kind
    if kind not in HEALTH_CHECK_TYPES:
        raise ManifestError(
            f"{where}.health-check-type: {kind!r} is not one of {', '.join(HEALTH_CHECK_TYPES)}"
        )
    if kind != "http":
        return "process" if kind == "none" else str(kind)
    path = "/" if endpoint is None else _str(endpoint, f"{where}.health-check-http-endpoint")
    if not path.startswith("/") or " " in path:
        raise ManifestError(
            f"{where}.health-check-http-endpoint: {path!r} must be a path starting with /"
        )
    return f"http:{path}"


# --- structure ------------------------------------------------------------------------
def _common(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """The attributes apps and processes share, validated."""
    out: dict[str, Any] = {"health_check": _health_check(attrs, where)}
    if "instances" in attrs:
        out["instances"] = _int(attrs["instances"], f"{where}.instances", 0, MAX_INSTANCES)
    if "memory" in attrs:
        out["memory_mb"] = _size(attrs["memory"], f"{where}.memory")
    if "disk_quota" in attrs:
        out["disk_mb"] = _size(attrs["disk_quota"], f"{where}.disk_quota")
    if "command" in attrs:
        out["command"] = _str(attrs["command"], f"{where}.command")
    if "timeout" in attrs:
        out["timeout"] = _int(attrs["timeout"], f"{where}.timeout", 1, MAX_TIMEOUT)
    return out


def _unknown(attrs: dict[str, Any], known: frozenset[str], where: str, warnings: list[str]) -> None:
    for key in attrs:
        if key not in known:
            warnings.append(f"{where}.{key}: unknown key, ignored")


def _process(raw: Any, where: str, warnings: list[str]) -> ProcessManifest:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be a mapping with a type")
    kind = _str(raw.get("type"), f"{where}.type")
    if process_name_problem(kind):
        raise ManifestError(f"{where}.type: {process_name_problem(kind)}")
    _unknown(raw, PROCESS_KEYS, where, warnings)
    return ProcessManifest(type=kind, **_common(raw, where))


def _processes(value: Any, where: str, warnings: list[str]) -> tuple[ProcessManifest, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"{where}: must be a list of process mappings")
    found = tuple(_process(p, f"{where}[{i}]", warnings) for i, p in enumerate(value))
    types = [p.type for p in found]
    dupes = sorted({t for t in types if types.count(t) > 1})
    if dupes:
        raise ManifestError(f"{where}: process type {dupes[0]!r} appears twice")
    return found


def _app(attrs: dict[str, Any], where: str, warnings: list[str]) -> AppManifest:
    name = _str(attrs.get("name"), f"{where}.name")
    if app_name_problem(name):
        raise ManifestError(f"{where}.name: {app_name_problem(name)}")
    _unknown(attrs, APP_KEYS, where, warnings)
    no_route = _bool(attrs.get("no-route", False), f"{where}.no-route")
    routes = _routes(attrs["routes"], f"{where}.routes") if "routes" in attrs else ()
    if no_route and routes:
        warnings.append(f"{where}.routes: ignored because no-route is true")
        routes = ()
    return AppManifest(
        name=name,
        routes=routes,
        no_route=no_route,
        random_route=_bool(attrs.get("random-route", False), f"{where}.random-route"),
        env=_env(attrs.get("env") or {}, f"{where}.env"),
        buildpacks=_buildpacks(attrs, where),
        path=_str(attrs["path"], f"{where}.path") if "path" in attrs else None,
        processes=_processes(attrs["processes"], f"{where}.processes", warnings)
        if "processes" in attrs
        else None,
        **_common(attrs, where),
    )


def parse_manifest(text: str) -> Manifest:
    """Parse manifest YAML; ManifestError (with the key's path) when it cannot be used."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"manifest is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a YAML mapping with an applications list")
    apps = doc.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ManifestError("applications: must be a non-empty list")
    warnings: list[str] = []
    top = {k: v for k, v in doc.items() if k not in TOP_ONLY_KEYS}
    _unknown(top, APP_KEYS - {"name"}, "(top level)", warnings)
    top = {k: v for k, v in top.items() if k in APP_KEYS - {"name"}}
    parsed = []
    for i, raw in enumerate(apps):
        if not isinstance(raw, dict):
            raise ManifestError(f"applications[{i}]: must be a mapping")
        merged = {**top, **raw}
        if isinstance(top.get("env"), dict) and isinstance(raw.get("env"), dict):
            merged["env"] = {**top["env"], **raw["env"]}
        parsed.append(_app(merged, f"applications[{i}]", warnings))
    names = [a.name for a in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"applications: app {dupes[0]!r} appears twice")
    return Manifest(tuple(parsed), tuple(warnings))


# --- --strict -------------------------------------------------------------------------
@dataclass(frozen=True)
class StrictDiff:
    """What `push --strict` removes so the app is exactly what its manifest says."""

    unset_env: tuple[str, ...] = ()
    unmap_routes: tuple[str, ...] = ()
    scale_to_zero: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return (
            [f"- env {k}" for k in self.unset_env]
            + [f"- route {r}" for r in self.unmap_routes]
            + [f"- process {p} (scaled to 0)" for p in self.scale_to_zero]
        )


def strict_diff(
    app: AppManifest,
    env: dict[str, str],
    routes: list[str],
    scale: dict[str, int],
    process_types: list[str],
) -> StrictDiff:
    """Env vars, mapped routes and process types the app has but the manifest does not
    name. Process types are judged only when the manifest lists `processes`; `web`
    is always named by the app's own attributes."""
    named = {p.type for p in app.processes} if app.processes is not None else None
    extra = (
        ()
        if named is None
        else tuple(
            sorted(
                p for p in process_types if p not in named and p != "web" and scale.get(p, 1) > 0
            )
        )
    )
    return StrictDiff(
        unset_env=tuple(sorted(k for k in env if k not in app.env)),
        unmap_routes=tuple(sorted(r for r in routes if r not in app.routes)),
        scale_to_zero=extra,
    )


@dataclass(frozen=True)
class AppNow:
    """What an app has now, as `strict_changes` compares a manifest with it."""

    env: dict[str, str]
    routes: tuple[str, ...]
    scale: dict[str, int]
    processes: dict[str, str]  # the current release's process types and commands
    memory_mb: int
    health_check: str


def _wanted(app: AppManifest) -> dict[str, tuple[int | None, str | None, str | None]]:
    """(instances, command, health check) the manifest sets per process type (None: unset);
    the app's own attributes are its `web` process's, which a `web` entry overrides."""
    web = app.process("web") or ProcessManifest(type="web")
    wanted = {
        "web": (
            web.instances if web.instances is not None else app.instances,
            app.command or web.command,
            web.health_check or app.health_check,
        )
    }
    for p in app.processes or ():
        if p.type != "web":
            wanted[p.type] = (p.instances, p.command, None)
    return wanted


def strict_changes(app: AppManifest, now: AppNow, removals: StrictDiff) -> list[str]:
    """Every difference a `--strict` push of `app` makes to an app that has `now`, one line
    each: settings set to a new value, config vars added, changed or removed (names only),
    routes mapped or unmapped, and process types scaled to 0 (`removals`)."""
    lines = []
    for kind, (instances, command, health) in _wanted(app).items():
        before = now.scale.get(kind, 1)
        if instances is not None and instances != before:
            lines.append(f"instances ({kind}): {before} -> {instances}")
        if command is not None and kind not in now.processes:
            lines.append(f"process {kind}: added, running {command!r}")
        elif command is not None and command != now.processes[kind]:
            lines.append(f"command ({kind}): {now.processes[kind]!r} -> {command!r}")
        if health is not None and health != now.health_check:
            lines.append(f"health check: {now.health_check} -> {health}")
    if app.memory_mb is not None and app.memory_mb != now.memory_mb:
        lines.append(f"memory: {now.memory_mb}M -> {app.memory_mb}M")
    lines += [
        f"env {k}: added" if k not in now.env else f"env {k}: changed"
        for k in sorted(app.env)
        if now.env.get(k) != app.env[k]
    ]
    lines += [f"env {k}: removed" for k in removals.unset_env]
    lines += [
        f"route {r}: mapped"
        for r in app.routes
        if r not in now.routes and not r.startswith(f"{app.name}.")
    ]
    lines += [f"route {r}: unmapped" for r in removals.unmap_routes]
    lines += [
        f"instances ({p}): {now.scale.get(p, 1)} -> 0 (the manifest does not name it)"
        for p in removals.scale_to_zero
    ]
    return lines
