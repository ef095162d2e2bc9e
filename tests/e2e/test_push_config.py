"""Config vars from a manifest travel in request bodies: after a push, the secret is in no
request line the CLI sent and in no log line of the platform (control, node and edge
logs, `foundry up`'s output, `foundry logs`). The CLI reaches the API through the edge
(api.<domain>, via a recording relay used as its HTTP proxy), so the edge's access log
sees every URL the push used."""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Platform, eventually

pytestmark = pytest.mark.slow

SERVER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"set" if os.environ.get("SECRET_TOKEN") else b"unset"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


class Relay:
    """A loopback TCP relay to `port` that keeps every byte clients sent through it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            self._start(self._pipe, client, upstream, True)
            self._start(self._pipe, upstream, client, False)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self.lock:
                        self.sent += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def request_lines(self) -> list[str]:
        with self.lock:
            text = bytes(self.sent).decode("latin-1")
        return re.findall(r"(?m)^(?:GET|POST|PATCH|PUT|DELETE) \S+ HTTP/1\.1", text)

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        for s in [self.server, *self.sockets]:
            s.close()


@pytest.fixture
def relay(platform: Platform) -> Iterator[Relay]:
    r = Relay(platform.http_port)
    yield r
    r.close()


def write_app(root: Path, secret: str, symlink: bool) -> None:
    root.mkdir()
    (root / "Procfile").write_text("web: python3 -u server.py\n")
    (root / "server.py").write_text(SERVER)
    if symlink:  # no resource matching: the tarball path
        (root / "link.py").symlink_to("server.py")
    (root / "manifest.yml").write_text(
        f"applications:\n- name: {root.name}\n  memory: 128M\n"
        f"  env:\n    SECRET_TOKEN: {secret}\n    PLAIN: visible\n"
    )


@pytest.mark.parametrize("symlink", [False, True], ids=["resource-matched", "tarball"])
def test_a_manifest_secret_reaches_the_app_but_no_url_or_log(
    platform: Platform, relay: Relay, tmp_path: Path, symlink: bool
) -> None:
    secret = "s3cr3t-" + secrets.token_hex(16)
    app = "cfg-" + ("tar" if symlink else "res")
    write_app(tmp_path / app, secret, symlink)
    token = (platform.home / "admin-token").read_text().strip()
    env = {
        **platform.env,
        "FOUNDRY_API": f"http://api.localhost:{platform.http_port}",
        "FOUNDRY_TOKEN": token,
        "HTTP_PROXY": f"http://127.0.0.1:{relay.port}",
    }
    for key in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "push", str(tmp_path / app)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{platform.logs()}"
    assert f"{app} v1 is running" in result.stdout

    assert platform.api("GET", f"/v1/apps/{app}/env").json()["env"] == {
        "SECRET_TOKEN": secret,
        "PLAIN": "visible",
    }
    eventually(lambda: platform.get(app).text == "set", 20, "the app to see its secret")

    lines = relay.request_lines()
    builds = [line for line in lines if f"/v1/apps/{app}/builds" in line]
    assert builds, lines  # the push went through the relay and the edge
    assert not [line for line in lines if secret in line or "env=" in line], lines

    # Router lines reach `foundry logs` in batches: wait for the app's GETs to arrive.
    logs = eventually(
        lambda: (lambda out: out if "GET" in out else "")(
            platform.cli("logs", app, "--lines", "2000").stdout
        ),
        20,
        "router lines in the logs",
    )
    assert secret not in logs
    files = [*sorted((platform.home / "logs").glob("*.log")), platform.home.parent / "up.out"]
    for f in files:  # control, node, edge and `foundry up` itself
        assert secret not in f.read_text(errors="replace"), f.name
