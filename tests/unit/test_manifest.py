"""Cloud Foundry manifest parsing: each key, top-level inheritance, several apps, unknown
keys as warnings, invalid values as errors naming the key's path; and --strict's diff."""

from __future__ import annotations

import re

import pytest

from control.manifest import (
    AppManifest,
    AppNow,
    ManifestError,
    ProcessManifest,
    parse_manifest,
    strict_changes,
    strict_diff,
)


def one(text: str) -> AppManifest:
    manifest = parse_manifest(text)
    assert len(manifest.applications) == 1
    return manifest.applications[0]


def test_every_app_key() -> None:
    app = one("""
applications:
- name: shop
  instances: 3
  memory: 1G
  disk_quota: 512M
  routes:
  - route: shop.example.com
  - route: example.com/shop/
  random-route: true
  env: {GREETING: hi, WORKERS: 4, DEBUG: false, RATIO: 0.5}
  buildpack: python
  command: gunicorn app:app
  health-check-type: http
  health-check-http-endpoint: /healthz
  timeout: 90
  path: ./src
  processes:
  - type: worker
    instances: 2
    memory: 128M
    disk_quota: 1G
    command: python3 worker.py
    health-check-type: process
    timeout: 30
""")
    assert app == AppManifest(
        name="shop",
        instances=3,
        memory_mb=1024,
        disk_mb=512,
        routes=("shop.example.com", "example.com/shop"),
        random_route=True,
        env={"GREETING": "hi", "WORKERS": "4", "DEBUG": "false", "RATIO": "0.5"},
        buildpacks=("python",),
        command="gunicorn app:app",
        health_check="http:/healthz",
        timeout=90,
        path="./src",
        processes=(
            ProcessManifest(
                type="worker",
                instances=2,
                memory_mb=128,
                disk_mb=1024,
                command="python3 worker.py",
                health_check="process",
                timeout=30,
            ),
        ),
    )
    assert app.process("worker") is not None
    assert app.process("web") is None


@pytest.mark.parametrize(
    ("attrs", "health"),
    [
        ("health-check-type: port", "port"),
        ("health-check-type: process", "process"),
        ("health-check-type: none", "process"),  # CF's old name for process
        ("health-check-type: http", "http:/"),
        ("health-check-http-endpoint: /up", "http:/up"),
        ("name2: x", None),
    ],
)
def test_health_check_types(attrs: str, health: str | None) -> None:
    app = one(f"applications:\n- name: a\n  {attrs}\n")
    assert app.health_check == health


def test_defaults_and_buildpacks_list() -> None:
    app = one("applications:\n- name: a\n  buildpacks: [node]\n")
    assert (app.instances, app.memory_mb, app.routes, app.no_route, app.random_route) == (
        None,
        None,
        (),
        False,
        False,
    )
    assert app.buildpacks == ("node",)
    assert app.processes is None
    assert app.env == {}


def test_no_route_drops_routes_with_a_warning() -> None:
    manifest = parse_manifest(
        "applications:\n- name: w\n  no-route: true\n  routes: [{route: w.example.com}]\n"
    )
    assert manifest.applications[0].no_route
    assert manifest.applications[0].routes == ()
    assert manifest.warnings == ("applications[0].routes: ignored because no-route is true",)


def test_top_level_attributes_are_inherited_and_overridden() -> None:
    manifest = parse_manifest("""
version: 1
memory: 128M
instances: 2
env: {SHARED: yes-all, LEVEL: top}
applications:
- name: one
- name: two
  instances: 5
  env: {LEVEL: app}
""")
    first, second = manifest.applications
    assert (first.memory_mb, first.instances) == (128, 2)
    assert first.env == {"SHARED": "yes-all", "LEVEL": "top"}
    assert (second.memory_mb, second.instances) == (128, 5)
    assert second.env == {"SHARED": "yes-all", "LEVEL": "app"}
    assert manifest.warnings == ()
    assert manifest.app("two") is second


def test_unknown_keys_are_warnings_naming_them() -> None:
    manifest = parse_manifest("""
stack: cflinuxfs4
applications:
- name: a
  services: [db]
  processes:
  - type: web
    readiness-health-check-type: http
""")
    assert manifest.warnings == (
        "(top level).stack: unknown key, ignored",
        "applications[0].services: unknown key, ignored",
        "applications[0].processes[0].readiness-health-check-type: unknown key, ignored",
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("- just a list", "manifest must be a YAML mapping"),
        ("applications: []", "applications: must be a non-empty list"),
        ("applications: [[1]]", "applications[0]: must be a mapping"),
        ("applications:\n- instances: 1", "applications[0].name: must be a non-empty string"),
        ("applications:\n- name: Bad_Name", "applications[0].name: app name 'Bad_Name'"),
        (
            "applications:\n- name: a\n- name: b\n  memory: lots",
            "applications[1].memory: memory 'lots' is not a size",
        ),
        ("applications:\n- name: a\n  disk_quota: [1]", "applications[0].disk_quota:"),
        ("applications:\n- name: a\n  instances: many", "applications[0].instances: 'many' is not"),
        ("applications:\n- name: a\n  instances: 500", "applications[0].instances: 500 is not"),
        ("applications:\n- name: a\n  instances: true", "applications[0].instances: True is not"),
        ("applications:\n- name: a\n  routes: a.com", "applications[0].routes: must be a list"),
        (
            "applications:\n- name: a\n  routes: [{route: 'bad host!'}]",
            "applications[0].routes[0].route: route host",
        ),
        ("applications:\n- name: a\n  no-route: maybe", "applications[0].no-route: 'maybe'"),
        ("applications:\n- name: a\n  random-route: 3", "applications[0].random-route: 3"),
        ("applications:\n- name: a\n  env: [A]", "applications[0].env: must be a mapping"),
        ("applications:\n- name: a\n  env: {1BAD: x}", "applications[0].env.1BAD: config var"),
        ("applications:\n- name: a\n  env: {PORT: '1'}", "applications[0].env.PORT: config var"),
        ("applications:\n- name: a\n  env: {A: [1]}", "applications[0].env.A: must be a string"),
        (
            "applications:\n- name: a\n  buildpack: x\n  buildpacks: [y]",
            "applications[0]: use buildpack or buildpacks, not both",
        ),
        ("applications:\n- name: a\n  buildpacks: x", "applications[0].buildpacks: must be a list"),
        ("applications:\n- name: a\n  command: ''", "applications[0].command: must be"),
        (
            "applications:\n- name: a\n  health-check-type: tcp",
            "applications[0].health-check-type: 'tcp' is not one of",
        ),
        (
            "applications:\n- name: a\n  health-check-http-endpoint: health",
            "applications[0].health-check-http-endpoint: 'health' must be a path",
        ),
        ("applications:\n- name: a\n  timeout: 0", "applications[0].timeout: 0 is not between"),
        ("applications:\n- name: a\n  path: 7", "applications[0].path: must be"),
        ("applications:\n- name: a\n  processes: {web: 1}", "applications[0].processes: must be"),
        (
            "applications:\n- name: a\n  processes: [{instances: 1}]",
            "applications[0].processes[0].type: must be",
        ),
        (
            "applications:\n- name: a\n  processes: [{type: Web!}]",
            "applications[0].processes[0].type: process type",
        ),
        (
            "applications:\n- name: a\n  processes: [{type: w}, {type: w}]",
            "applications[0].processes: process type 'w' appears twice",
        ),
        (
            "applications:\n- name: a\n  processes: [{type: w, memory: 1T}]",
            "applications[0].processes[0].memory:",
        ),
        ("applications:\n- name: a\n- name: a", "applications: app 'a' appears twice"),
        ("memory: nope\napplications:\n- name: a", "applications[0].memory:"),
        ("applications: [{name: a}]\n  bad: [", "manifest is not valid YAML"),
    ],
)
def test_invalid_values_name_the_key_path(text: str, error: str) -> None:
    with pytest.raises(ManifestError, match="^" + re.escape(error)):
        parse_manifest(text)


def test_asking_for_an_app_the_manifest_lacks() -> None:
    with pytest.raises(ManifestError, match="no app 'c' \\(it has a, b\\)"):
        parse_manifest("applications: [{name: a}, {name: b}]").app("c")


def test_strict_diff_removes_what_the_manifest_does_not_name() -> None:
    app = one(
        "applications:\n- name: a\n  env: {KEEP: '1'}\n  routes: [{route: a.x.com}]\n"
        "  processes: [{type: web}, {type: worker}]\n"
    )
    diff = strict_diff(
        app,
        {"KEEP": "1", "DROP": "2"},
        ["a.x.com", "old.x.com"],
        {"web": 1, "worker": 1, "clock": 1, "idle": 0},
        ["web", "worker", "clock", "idle"],
    )
    assert diff.unset_env == ("DROP",)
    assert diff.unmap_routes == ("old.x.com",)
    assert diff.scale_to_zero == ("clock",)
    assert diff.lines() == ["- env DROP", "- route old.x.com", "- process clock (scaled to 0)"]


def test_strict_diff_leaves_process_types_alone_when_the_manifest_names_none() -> None:
    app = one("applications:\n- name: a\n")
    diff = strict_diff(app, {}, [], {"worker": 1}, ["web", "worker"])
    assert diff.lines() == []


NOW = AppNow(
    env={"KEEP": "1", "SECRET": "old-secret", "DROP": "x"},
    routes=("old.x.com",),
    scale={"web": 2, "worker": 1, "clock": 1},
    processes={"web": "python3 server.py", "worker": "python3 w.py", "clock": "python3 c.py"},
    memory_mb=256,
    health_check="port",
)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            "applications:\n- name: a\n  instances: 2\n  memory: 256M\n"
            "  env: {KEEP: '1', SECRET: old-secret, DROP: x}\n  routes: [{route: old.x.com}]\n",
            [],
        ),
        (
            "applications:\n- name: a\n  instances: 1\n"
            "  env: {KEEP: '1', SECRET: old-secret, DROP: x}\n  routes: [{route: old.x.com}]\n",
            ["instances (web): 2 -> 1"],
        ),
        (
            "applications:\n- name: a\n  memory: 1G\n  health-check-type: process\n"
            "  env: {KEEP: '1', SECRET: new-secret, NEW: y}\n"
            "  routes: [{route: old.x.com}, {route: a.localhost}, {route: new.x.com}]\n",
            [
                "health check: port -> process",
                "memory: 256M -> 1024M",
                "env NEW: added",
                "env SECRET: changed",
                "env DROP: removed",
                "route new.x.com: mapped",
            ],
        ),
        (
            "applications:\n- name: a\n  command: gunicorn app\n  no-route: true\n"
            "  env: {KEEP: '1', SECRET: old-secret, DROP: x}\n"
            "  processes: [{type: worker, instances: 3}, {type: mailer, command: python3 m.py}]\n",
            [
                "command (web): 'python3 server.py' -> 'gunicorn app'",
                "instances (worker): 1 -> 3",
                "process mailer: added, running 'python3 m.py'",
                "route old.x.com: unmapped",
                "instances (clock): 1 -> 0 (the manifest does not name it)",
            ],
        ),
    ],
)
def test_strict_changes_lists_every_difference_and_never_a_value(
    manifest: str, expected: list[str]
) -> None:
    app = one(manifest)
    removals = strict_diff(app, NOW.env, list(NOW.routes), NOW.scale, list(NOW.processes))
    lines = strict_changes(app, NOW, removals)
    assert lines == expected
    assert not any("secret" in line for line in lines)  # config values are never shown
