"""Packs end to end: a node app with only a package.json, python runtime and Procfile
hints, a third-party buildpack from a local directory, --no-cache, and `foundry
buildpacks`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Platform

pytestmark = pytest.mark.slow


def test_node_app_with_only_a_package_json(platform: Platform) -> None:
    result = platform.cli("push", str(EXAMPLES / "hello-node"), "--name", "hello-node")
    assert "node app detected" in result.stdout
    assert "npm install (no lock file)" in result.stdout
    r = platform.get("hello-node")
    assert r.status_code == 200
    assert r.text.startswith("Hello from hello-node (Node.js v")
    assert platform.get("hello-node", "/env").text == "NODE_ENV=production\n"


def test_node_engines_the_node_cannot_satisfy_fail_the_build(
    platform: Platform, tmp_path: Path
) -> None:
    app = tmp_path / "old-node"
    shutil.copytree(EXAMPLES / "hello-node", app)
    package = json.loads((app / "package.json").read_text())
    (app / "package.json").write_text(json.dumps({**package, "engines": {"node": "^12"}}))
    result = platform.cli("push", str(app), "--name", "old-node", check=False)
    assert result.returncode == 1
    assert "asks for Node.js ^12" in result.stderr
    assert "this node has v" in result.stderr


def test_python_app_without_procfile_is_told_which_line_to_add(
    platform: Platform, tmp_path: Path
) -> None:
    app = tmp_path / "no-procfile"
    shutil.copytree(EXAMPLES / "hello-python", app)
    (app / "Procfile").unlink()
    result = platform.cli("push", str(app), "--name", "no-procfile", check=False)
    assert result.returncode == 1
    assert "web: gunicorn app:app --bind 0.0.0.0:$PORT" in result.stderr


def test_python_version_the_node_lacks_lists_what_exists(
    platform: Platform, tmp_path: Path
) -> None:
    app = tmp_path / "py-old"
    shutil.copytree(EXAMPLES / "hello-python", app)
    (app / ".python-version").write_text("3.4\n")
    result = platform.cli("push", str(app), "--name", "py-old", check=False)
    assert result.returncode == 1
    assert ".python-version asks for Python 3.4, but this node has only Python 3." in result.stderr


THIRD_PARTY = {
    "bin/detect": "#!/bin/sh\necho counter\n",
    # Counts its runs in the cache dir, so a test can see the cache kept or bypassed.
    "bin/compile": '#!/bin/sh\nset -e\nruns=$(cat "$2/runs" 2>/dev/null || echo 0)\n'
    'runs=$((runs + 1))\necho $runs > "$2/runs"\n'
    'echo "-----> counter pack run $runs"\n'
    'echo "built by a third-party pack, cache run $runs" > "$1/index.txt"\n',
    "bin/release": "#!/bin/sh\necho '---'\necho 'default_process_types:'\n"
    "echo '  web: python3 -m http.server $PORT --bind 0.0.0.0'\n",
}


def test_third_party_buildpack_from_a_local_directory_and_no_cache(
    platform: Platform, tmp_path: Path
) -> None:
    pack = tmp_path / "counter-pack"
    for name, text in THIRD_PARTY.items():
        (pack / name).parent.mkdir(parents=True, exist_ok=True)
        (pack / name).write_text(text)
        (pack / name).chmod(0o755)
    source = tmp_path / "plain"
    source.mkdir()
    (source / "README").write_text("no pack of ours would detect this\n")
    first = platform.cli("push", str(source), "--name", "third-party", "--buildpack", str(pack))
    assert "Using buildpack blob:" in first.stdout
    assert (
        platform.get("third-party", "/index.txt").text
        == "built by a third-party pack, cache run 1\n"
    )
    # The same source and options again: the build runs with the kept cache, and since
    # nothing the app runs from changed, release v1 stays (an unchanged re-push is a no-op).
    again = platform.cli("push", str(source), "--name", "third-party", "--buildpack", str(pack))
    assert "counter pack run 2" in again.stdout
    assert "no change: release v1 is current" in again.stdout
    fresh = platform.cli(
        "push", str(source), "--name", "third-party", "--buildpack", str(pack), "--no-cache"
    )
    assert "--no-cache: starting from an empty build cache" in fresh.stdout
    assert "counter pack run 1" in fresh.stdout
    assert "no change" not in fresh.stdout
    view = json.loads(platform.cli("app", "third-party", "--json").stdout)
    assert view["release"] == 2
    assert platform.get("third-party", "/index.txt").text.endswith("cache run 1\n")


def test_buildpack_by_name_skips_detection_and_bad_names_are_refused(
    platform: Platform, tmp_path: Path
) -> None:
    source = tmp_path / "forced"
    shutil.copytree(EXAMPLES / "static-site", source)
    (source / "Procfile").write_text("web: python3 -m http.server $PORT --bind 0.0.0.0\n")
    result = platform.cli("push", str(source), "--name", "forced", "-b", "procfile")
    assert "Using buildpack procfile" in result.stdout
    bad = platform.cli("push", str(source), "--name", "forced", "-b", "nonesuch", check=False)
    assert bad.returncode == 1
    assert "no buildpack 'nonesuch': use one of python, node, static, procfile" in bad.stderr


def test_buildpacks_lists_installed_packs_in_detection_order(platform: Platform) -> None:
    rows = json.loads(platform.cli("buildpacks", "--json").stdout)
    assert [r["name"] for r in rows] == ["python", "node", "static", "procfile"]
    assert [r["position"] for r in rows] == [1, 2, 3, 4]
    assert "POSITION" in platform.cli("buildpacks").stdout
