"""The end-to-end slice: push, serve through the edge, scale, stop/start, env, failed
builds, static sites, workers, logs, restarts of `foundry up`, deletes and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Platform, eventually

pytestmark = pytest.mark.slow


def indexes_seen(platform: Platform, app: str, tries: int = 30) -> set[str]:
    seen = set()
    for _ in range(tries):
        r = platform.get(app)
        if r.status_code == 200:
            seen.add(r.text.strip().rsplit(" ", 1)[-1])
    return seen


def test_push_serves_the_app_through_the_edge(platform: Platform) -> None:
    result = platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "hello")
    assert f"http://hello.localhost:{platform.http_port}" in result.stdout
    assert "Installing dependencies" in result.stdout  # the build log was streamed
    r = platform.get("hello")
    assert r.status_code == 200
    assert r.text == "Hello from hello, instance 0\n"
    # The edge's access line reaches the app's log as source `router`.
    eventually(lambda: "[router]" in platform.cli("logs", "hello").stdout, 15, "router lines")


def test_scale_to_three_and_each_instance_answers(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "scaled")
    platform.cli("scale", "scaled", "-i", "3")
    eventually(
        lambda: indexes_seen(platform, "scaled", 12) == {"0", "1", "2"},
        60,
        "three distinct instances answering",
    )
    view = platform.cli("app", "scaled", "--json").stdout
    assert view.count('"state": "RUNNING"') == 3


def test_stop_answers_503_and_start_brings_it_back(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "stopper")
    platform.cli("stop", "stopper")
    r = eventually(
        lambda: (resp := platform.get("stopper")).status_code == 503 and resp, 30, "503 after stop"
    )
    assert "stopper" in r.text
    platform.cli("start", "stopper")
    eventually(lambda: platform.get("stopper").status_code == 200, 30, "200 after start")


def test_failed_build_keeps_the_previous_release_serving(
    platform: Platform, tmp_path: Path
) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "sturdy")
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "hello-python", broken)
    with open(broken / "requirements.txt", "a") as f:
        f.write("foundry-no-such-package-4f1c9a==1.0\n")
    result = platform.cli("push", str(broken), "--name", "sturdy", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("foundry: build failed")
    assert "foundry-no-such-package-4f1c9a" in result.stdout  # the end of the build log
    assert platform.get("sturdy").status_code == 200
    assert '"release": 1' in platform.cli("app", "sturdy", "--json").stdout


def test_set_env_reaches_the_app_and_unset_removes_it(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "configured")
    value = "it's $(not) a `shell`; really"
    platform.cli("set-env", "configured", f"GREETING={value}")
    eventually(
        lambda: platform.get("configured").text.startswith(value),
        30,
        "the new config var in the app",
    )
    assert f"GREETING={value}" in platform.cli("env", "configured").stdout
    platform.cli("unset-env", "configured", "GREETING")
    eventually(
        lambda: platform.get("configured").text.startswith("Hello from"),
        30,
        "the default greeting again",
    )
    assert "v3" in platform.cli("releases", "configured").stdout


def test_static_site(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "static-site"))
    r = platform.get("static-site")
    assert r.status_code == 200
    assert "Static site on Foundry" in r.text
    assert platform.get("static-site", "/nope").status_code == 404


def test_worker_lines_reach_the_logs(platform: Platform) -> None:
    result = platform.cli("push", str(EXAMPLES / "worker"))
    assert "no web process" in result.stdout
    logs = eventually(
        lambda: "tick 2" in (out := platform.cli("logs", "worker").stdout) and out,
        30,
        "worker lines in foundry logs",
    )
    assert "[app/worker.0] worker 0 tick 1" in logs
    assert "[build]" in logs
    assert platform.get("worker").status_code == 404  # no web process, no route


def test_unknown_host_is_404_and_api_is_routed(platform: Platform) -> None:
    assert platform.get("no-such-app").status_code == 404
    r = platform.get("api", "/v1/health")
    assert r.status_code == 200
    assert r.json()["ok"] is True


def test_delete_removes_the_route(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "doomed")
    platform.cli("delete", "doomed", "-f")
    assert platform.get("doomed").status_code == 404
    result = platform.cli("app", "doomed", check=False)
    assert result.returncode == 1
    assert result.stderr == "foundry: no app named 'doomed'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push", "/no/such/dir"], "no such directory"),
        (["push", str(EXAMPLES / "worker"), "--name", "Not_A_Label"], "is not a DNS label"),
        (["app", "ghost"], "no app named 'ghost'"),
        (["scale", "ghost", "-i", "2"], "no app named 'ghost'"),
        (["set-env", "ghost", "NOEQUALS"], "is not KEY=VALUE"),
        (["push", str(EXAMPLES / "hello-python"), "-m", "lots"], "not a size"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    platform: Platform, args: list[str], message: str
) -> None:
    result = platform.cli(*args, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_push_without_a_pack_fails_and_leaves_no_app(platform: Platform, tmp_path: Path) -> None:
    (tmp_path / "README").write_text("nothing runnable here")
    result = platform.cli("push", str(tmp_path), "--name", "packless", check=False)
    assert result.returncode == 1
    assert "no pack detected" in result.stderr
    assert platform.cli("app", "packless", check=False).returncode == 1


def test_api_refuses_missing_tokens_and_bad_archives(platform: Platform) -> None:
    import httpx

    r = httpx.get(f"http://127.0.0.1:{platform.api_port}/v1/apps")
    assert r.status_code == 401
    assert "bearer token" in r.json()["error"]
    r = platform.api("POST", "/v1/apps/junk/builds", content=b"not a tarball")
    assert r.status_code == 422
    assert "not a gzip'd tar" in r.json()["error"]
    assert platform.api("GET", "/v1/apps/junk").status_code == 404  # nothing half created
    r = platform.api("POST", "/v1/apps/Bad_Name/builds", content=b"x")
    assert r.status_code == 422
    assert "DNS label" in r.json()["error"]


def test_restarting_foundry_up_brings_every_app_back(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "survivor")
    took = platform.stop()
    assert took < 10.5
    platform.start()
    eventually(lambda: platform.get("survivor").status_code == 200, 60, "survivor back")
    eventually(lambda: platform.get("static-site").status_code == 200, 60, "static back")
    eventually(lambda: "tick" in platform.cli("logs", "worker").stdout, 30, "worker back")
