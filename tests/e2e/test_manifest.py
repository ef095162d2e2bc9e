"""Manifests end to end: two apps from one manifest.yml (a web app with an http health
check, env and an extra route; a no-route worker), and --strict removing an env var."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Platform, eventually

pytestmark = pytest.mark.slow

SERVER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("ok" if self.path == "/health" else os.environ.get("GREETING", "none")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


def write_apps(root: Path) -> None:
    (root / "web").mkdir()
    (root / "web" / "Procfile").write_text("web: python3 -u server.py\n")
    (root / "web" / "server.py").write_text(SERVER)
    (root / "worker").mkdir()
    for name in ("Procfile", "worker.py"):
        (root / "worker" / name).write_text((EXAMPLES / "worker" / name).read_text())


def test_a_manifest_with_two_apps_a_no_route_worker_and_an_http_health_check(
    platform: Platform, tmp_path: Path
) -> None:
    write_apps(tmp_path)
    (tmp_path / "manifest.yml").write_text("""
memory: 128M
env:
  GREETING: from-the-manifest
applications:
- name: mf-web
  path: web
  instances: 2
  health-check-type: http
  health-check-http-endpoint: /health
  routes:
  - route: mf-extra.localhost/extra
  stack: cflinuxfs4
- name: mf-worker
  path: worker
  no-route: true
  health-check-type: process
""")
    result = platform.cli("push", str(tmp_path))
    assert "warning:" in result.stderr
    assert "applications[0].stack: unknown key" in result.stderr
    assert "mf-web v1 is running" in result.stdout
    assert "mf-worker v1 is running: no web process" in result.stdout
    web = json.loads(platform.cli("app", "mf-web", "--json").stdout)
    assert web["health_check"] == "http:/health"
    assert web["memory_mb"] == 128
    assert sum(1 for i in web["instances"] if i["state"] == "RUNNING") == 2
    assert platform.get("mf-web").text == "from-the-manifest"
    eventually(
        lambda: platform.get("mf-extra", "/extra").status_code == 200,
        20,
        "the manifest's extra route",
    )
    worker = json.loads(platform.cli("app", "mf-worker", "--json").stdout)
    assert list(worker["processes"]) == ["worker"]
    assert worker["memory_mb"] == 128
    assert platform.get("mf-worker").status_code == 404  # no route at all


def test_strict_removes_an_env_var_the_manifest_no_longer_names(
    platform: Platform, tmp_path: Path
) -> None:
    write_apps(tmp_path)
    manifest = tmp_path / "strict.yml"
    manifest.write_text(
        "applications:\n- name: mf-strict\n  path: web\n  env: {GREETING: kept, DROPPED: soon}\n"
    )
    platform.cli("push", str(tmp_path), "-f", str(manifest))
    assert platform.api("GET", "/v1/apps/mf-strict/env").json()["env"] == {
        "GREETING": "kept",
        "DROPPED": "soon",
    }
    platform.cli("set-env", "mf-strict", "ADDED=by-hand")
    manifest.write_text("applications:\n- name: mf-strict\n  path: web\n  env: {GREETING: kept}\n")
    plain = platform.cli("push", str(tmp_path), "-f", str(manifest))  # a manifest only adds
    assert "ADDED" in platform.api("GET", "/v1/apps/mf-strict/env").json()["env"]
    assert "--strict" not in plain.stderr
    strict = platform.cli("push", str(tmp_path), "-f", str(manifest), "--strict", "--yes")
    assert "env ADDED: removed" in strict.stdout
    assert "env DROPPED: removed" in strict.stdout
    assert platform.api("GET", "/v1/apps/mf-strict/env").json()["env"] == {"GREETING": "kept"}
    assert platform.get("mf-strict").text == "kept"


def test_invalid_manifest_is_one_line_naming_the_key(platform: Platform, tmp_path: Path) -> None:
    (tmp_path / "manifest.yml").write_text("applications:\n- name: a\n- name: b\n  memory: lots\n")
    result = platform.cli("push", str(tmp_path), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "applications[1].memory: memory 'lots'" in lines[0]
