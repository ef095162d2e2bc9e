"""The CLI's client side (control.client, control.deploy, control.follow, control.sources,
control.views) against the real control plane app, through an httpx.Client whose
transport calls the ASGI app (no sockets), as `foundry` uses it.

(starlette's TestClient would do, but with httpx it warns that it wants httpx2, whose
client is not an httpx.Client: the bridge below is the few lines it would give.)"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.types import ASGIApp

from control.api import create_app
from control.cli import views
from control.cli.client import Api, CLIError, reason
from control.cli.deploy import PushJob, apply_manifest, current_routes, show_strict_diff
from control.cli.follow import log_lines
from control.cli.sources import listing_cache, scan_resources, send_listing
from control.config import ControlConfig
from control.manifest import parse_manifest
from control.store import Store


class ASGIBridge(httpx.BaseTransport):
    """A sync transport over httpx's ASGITransport: each request runs the app in an event
    loop of its own, as starlette's TestClient does."""

    def __init__(self, app: ASGIApp) -> None:
        self.inner = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()  # an upload generator is drained here, on this side

        async def call() -> httpx.Response:
            copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            answer = await self.inner.handle_async_request(copy)
            content = await answer.aread()
            return httpx.Response(answer.status_code, headers=answer.headers, content=content)

        return anyio.run(call)


@dataclass
class Recorder:
    """A Reporter that keeps what it is told; `answer` is the user's reply to a question
    (None: no terminal)."""

    answer: bool | None = None
    said: list[str] = field(default_factory=list)
    told: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.said.append(text)

    def tell(self, text: str) -> None:
        self.told.append(text)

    def uploading(self, sent: int, total: int) -> None:
        self.said.append(f"{sent}/{total}")

    def uploaded(self) -> None:
        self.said.append("uploaded")

    def confirm(self, question: str) -> bool | None:
        self.said.append(question)
        return self.answer


@dataclass
class Platform:
    store: Store
    http: httpx.Client
    admin: str

    def api(self, token: str | None = None) -> Api:
        return Api("http://control", token or self.admin, http=self.http)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    store = Store(tmp_path / "foundry.db")
    app = create_app(store, ControlConfig(home=tmp_path), converge_loop=False)
    _, admin = store.create_token("admin")
    http = httpx.Client(transport=ASGIBridge(app), base_url="http://control")
    yield Platform(store, http, admin)
    http.close()
    store.close()


def released(store: Store, name: str, processes: dict[str, str]) -> None:
    """An app with a current release of these process types (no droplet is ever run)."""
    store.create_app(name)
    store.create_release(
        name, droplet="0" * 64, env={}, processes=processes, pack="procfile", description="test"
    )


def test_a_refusal_becomes_the_apis_reason_as_one_line(platform: Platform) -> None:
    raw = platform.http.get("/v1/apps/nope", headers={"authorization": f"Bearer {platform.admin}"})
    assert raw.status_code == 404
    with pytest.raises(CLIError) as missing:
        platform.api().get("/v1/apps/nope")
    assert str(missing.value) == raw.json()["error"]
    with pytest.raises(CLIError) as bad_name:
        platform.api().request("POST", "/v1/apps/nope/scale", json={"instances": -1})
    assert str(bad_name.value)
    assert "\n" not in str(bad_name.value)
    with pytest.raises(CLIError) as refused:
        platform.api("not-a-token").get("/v1/apps")
    raw = platform.http.get("/v1/apps", headers={"authorization": "Bearer not-a-token"})
    assert str(refused.value) == raw.json()["error"]
    # a proxy in between may answer in plain text, or with nothing but a status
    assert reason(httpx.Response(502, text="upstream gone\n")) == "upstream gone"
    assert reason(httpx.Response(502)) == "Bad Gateway"


def test_an_unreachable_control_plane_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens there
    with httpx.Client() as http, pytest.raises(CLIError) as gone:
        Api(f"http://127.0.0.1:{port}", "t", http=http).get("/v1/apps")
    assert str(gone.value).startswith(
        f"cannot reach the control plane at http://127.0.0.1:{port} ("
    )
    assert str(gone.value).endswith("; is `foundry up` running?")


def test_apps_are_listed_and_shown(platform: Platform) -> None:
    released(platform.store, "shop", {"web": "serve", "worker": "work"})
    platform.store.create_app("empty")
    rows = platform.api().get("/v1/apps")["apps"]
    lines = views.table(rows, views.APPS)
    assert lines[0].split() == ["NAME", "STATE", "RELEASE", "RUNNING", "URL"]
    shop = next(line.split() for line in lines if line.startswith("shop"))
    assert shop[2:4] == ["v1", "0/2"]  # web and worker wanted, none running
    assert next(line.split() for line in lines if line.startswith("empty"))[2] == "-"
    view = platform.api().get("/v1/apps/shop")
    assert views.app_lines(view)[1] == "scale: web=1, worker=1"
    assert views.table(view["instances"], views.INSTANCES) == [
        "INSTANCE  STATE  RELEASE  NODE  PORT  UPTIME  RESTARTS  REASON"
    ]


def test_the_environment_wins_over_the_homes_settings(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("from-file\n")
    (tmp_path / "cli.json").write_text(
        json.dumps(
            {
                "api": "http://saved:7070",
                "token_file": str(token_file),
                "apps_url": "http://{app}.saved:8080",
            }
        )
    )
    home = {"FOUNDRY_HOME": str(tmp_path)}
    saved = Api.load(env=home)
    assert (saved.url, saved.token, saved.apps_url) == (
        "http://saved:7070",
        "from-file",
        "http://{app}.saved:8080",
    )
    given = Api.load(env={**home, "FOUNDRY_API": "http://given:1/", "FOUNDRY_TOKEN": "from-env"})
    assert (given.url, given.token) == ("http://given:1", "from-env")
    token_file.unlink()  # the file named is gone, and nothing else gives a token
    with pytest.raises(CLIError, match=r"^no control plane configured"):
        Api.load(env=home)
    with pytest.raises(CLIError, match=r"^no control plane configured"):
        Api.load(env={"FOUNDRY_HOME": str(tmp_path / "empty")})


def test_a_manifest_sets_routes_and_scales(platform: Platform, tmp_path: Path) -> None:
    released(platform.store, "shop", {"web": "serve", "worker": "work"})
    manifest = parse_manifest("""
applications:
- name: shop
  routes: [{route: www.example.com}, {route: example.com/shop}]
  processes: [{type: worker, instances: 3}]
""")
    job = PushJob(tmp_path, "shop", [], manifest=manifest.applications[0])
    report = Recorder()
    apply_manifest(platform.api(), job, None, report)
    routes = current_routes(platform.api(), "shop")
    assert {"www.example.com", "example.com/shop"} <= set(routes)
    assert platform.api().get("/v1/apps/shop")["scale"]["worker"] == 3
    apply_manifest(platform.api(), job, None, report)  # again: nothing mapped twice
    assert sorted(current_routes(platform.api(), "shop")) == sorted(routes)


def test_strict_shows_its_changes_and_needs_agreement(platform: Platform, tmp_path: Path) -> None:
    released(platform.store, "shop", {"web": "serve", "worker": "work"})
    platform.api().request("POST", "/v1/apps/shop/routes", json={"route": "old.example.com"})
    manifest = parse_manifest("applications:\n- name: shop\n  processes: [{type: web}]\n")
    job = PushJob(tmp_path, "shop", [], manifest=manifest.applications[0], strict=True)
    without_terminal = Recorder(answer=None)
    with pytest.raises(CLIError, match=r"^--strict would change shop as shown; pass --yes"):
        show_strict_diff(platform.api(), job, without_terminal)
    assert without_terminal.told[0] == "--strict: shop changes:"
    with pytest.raises(CLIError, match=r"^nothing changed: shop is left as it was"):
        show_strict_diff(platform.api(), job, Recorder(answer=False))
    diff = show_strict_diff(platform.api(), job, Recorder(answer=True))
    apply_manifest(platform.api(), job, diff, Recorder())
    assert "old.example.com" not in current_routes(platform.api(), "shop")
    assert platform.api().get("/v1/apps/shop")["scale"]["worker"] == 0


def test_log_lines_are_the_newest_ones(platform: Platform) -> None:
    platform.store.create_app("shop")
    platform.store.append_logs(
        [
            {"app": "shop", "source": "app/web.0", "line": f"line {n}", "ts": float(n)}
            for n in range(5)
        ]
    )
    lines = list(log_lines(platform.api(), "shop", 3, follow=False))
    assert [line["line"] for line in lines] == ["line 2", "line 3", "line 4"]
    assert views.log_line(lines[0]).endswith(" [app/web.0] line 2")


def test_the_source_listing_is_sent_whole_then_as_a_delta(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    platform.store.create_app("shop")
    source = tmp_path / "src"
    source.mkdir()
    (source / "app.py").write_text("print('hi')\n")
    (source / "README").write_text("shop\n")
    found = scan_resources(source)
    assert found is not None
    listing, missing, whole = send_listing(platform.api(), "shop", found)
    assert len(missing) == 2
    assert listing_cache(platform.api(), "shop").exists()
    (source / "README").write_text("shop, changed\n")
    found = scan_resources(source)
    assert found is not None
    newer, missing, delta = send_listing(platform.api(), "shop", found)
    assert newer != listing
    assert len(missing) == 1
    assert delta < whole
