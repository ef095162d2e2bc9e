"""Secrets at rest, from outside: a standalone `foundry control` keeps its home private
(also one found loose), config vars set through the API never reach the database file in
the clear yet reach the app, `foundry rotate-key` rotates under a serving control plane,
and a missing or wrong key stops it with one line."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control.store import Store
from control.vault import Keys, render_keyring
from tests.e2e.conftest import EXAMPLES, ROOT, Platform, eventually, free_port

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-okapi-51c9e2"
ENV = {k: v for k, v in os.environ.items() if k not in ("FOUNDRY_KEYRING", "FOUNDRY_HOME")}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def raw_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def foundry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Control:
    """A standalone `foundry control` on a random loopback port."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foundry",
                "control",
                "--home",
                str(self.home),
                "--listen",
                self.url.removeprefix("http://"),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        eventually(
            lambda: (
                self.proc is not None
                and (
                    self.proc.poll() is not None
                    or httpx.get(self.url + "/v1/health").status_code == 200
                )
            ),
            30,
            "the control plane to serve",
        )
        assert self.proc.poll() is None

    def stop(self) -> str:
        """Stop it as a service manager would; returns what it wrote on stderr."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=15)
        return err


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    c = Control(tmp_path / "control")
    yield c
    if c.proc is not None and c.proc.poll() is None:
        c.stop()


def admin_token(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    store = Store(home / "foundry.db")
    try:
        _, secret = store.create_token("admin")
    finally:
        store.close()
    return {"authorization": f"Bearer {secret}"}


def test_a_fresh_home_is_private(control: Control) -> None:
    control.start()
    home = control.home
    assert mode(home) == 0o700
    for name in ("foundry.db", "foundry.db-wal", "foundry.db-shm", "keyring.json"):
        assert mode(home / name) == 0o600, name
    assert mode(home / "blobs") == 0o700
    assert "tightened" not in control.stop()


def test_a_loose_home_is_tightened_with_one_log_line(control: Control) -> None:
    home = control.home
    admin_token(home)
    (home / "blobs").mkdir()
    (home / "blobs" / ("0" * 64)).write_bytes(b"source")
    for path, loose in (
        (home, 0o755),
        (home / "foundry.db", 0o644),
        (home / "keyring.json", 0o644),
        (home / "blobs", 0o755),
        (home / "blobs" / ("0" * 64), 0o644),
    ):
        path.chmod(loose)
    control.start()
    assert mode(home) == 0o700
    assert mode(home / "blobs") == 0o700
    for name in (
        "foundry.db",
        "foundry.db-wal",
        "foundry.db-shm",
        "keyring.json",
        "blobs/" + "0" * 64,
    ):
        assert mode(home / name) == 0o600, name
    err = control.stop()
    assert len([line for line in err.splitlines() if "tightened" in line]) == 1, err


def test_rotate_key_under_a_serving_control_plane(control: Control) -> None:
    home = control.home
    auth = admin_token(home)
    store = Store(home / "foundry.db")
    store.create_app("vaulted", env={"API_KEY": SECRET})
    key_a = store.keyring.keys.current
    store.close()
    control.start()

    rotated = foundry("rotate-key", "--home", str(home))
    assert rotated.returncode == 0, rotated.stderr
    assert f"dropped key(s): {key_a}" in rotated.stdout
    assert key_a not in (home / "keyring.json").read_text()
    env_url = control.url + "/v1/apps/vaulted/env"
    assert httpx.get(env_url, headers=auth).json()["env"] == {"API_KEY": SECRET}
    r = httpx.patch(env_url, json={"set": {"MORE": "after"}}, headers=auth)
    assert r.status_code == 200, r.text
    control.stop()
    assert f"fdy1:{key_a}:".encode() not in raw_bytes(home / "foundry.db")

    control.start()  # a new process, with key A gone, reads both values
    assert httpx.get(env_url, headers=auth).json()["env"] == {"API_KEY": SECRET, "MORE": "after"}


@pytest.mark.parametrize("damage", ["wrong", "missing"])
def test_a_missing_or_wrong_key_is_one_line_and_serves_nothing(tmp_path: Path, damage: str) -> None:
    home = tmp_path / "control"
    home.mkdir(mode=0o700)
    store = Store(home / "foundry.db")
    store.create_app("vaulted", env={"API_KEY": SECRET})
    label = store.keyring.keys.current
    store.close()
    ring = home / "keyring.json"
    if damage == "missing":
        ring.unlink()
    else:
        ring.write_text(render_keyring(Keys(label, {label: os.urandom(32)})))
    for args in (["control", "--listen", f"127.0.0.1:{free_port()}"], ["rotate-key"]):
        result = foundry(*args, "--home", str(home))
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("foundry: "), result.stderr
        assert ("does not open" if damage == "wrong" else "is missing") in lines[0]
        assert SECRET not in result.stderr + result.stdout
    assert ring.exists() == (damage == "wrong")  # no new key made over the old values


def test_a_config_var_reaches_the_app_but_not_the_database_file(platform: Platform) -> None:
    platform.cli("push", str(EXAMPLES / "hello-python"), "--name", "sealed")
    platform.cli("set-env", "sealed", f"API_KEY={SECRET}")
    eventually(
        lambda: platform.get("sealed", "/env?API_KEY").text == SECRET,
        60,
        "the config var inside the app",
    )
    assert f"API_KEY={SECRET}" in platform.cli("env", "sealed").stdout
    home = platform.home / "control"
    assert SECRET.encode() not in raw_bytes(home / "foundry.db")
    assert mode(home) == 0o700
    assert mode(home / "foundry.db") == 0o600


def test_an_operator_keyring_outside_the_home_rotates_by_hand(tmp_path: Path) -> None:
    home, ring = tmp_path / "control", tmp_path / "secrets" / "keyring.json"
    home.mkdir(mode=0o700)
    store = Store(home / "foundry.db", keyring=ring)
    store.create_app("vaulted", env={"API_KEY": SECRET})
    old = store.keyring.keys
    store.close()
    assert not (home / "keyring.json").exists()
    assert mode(ring) == 0o600
    # the operator adds a key of their own and makes it current, then reseals with it
    ring.write_text(render_keyring(Keys("ops-2", {**old.keys, "ops-2": os.urandom(32)})))
    result = subprocess.run(
        [sys.executable, "-m", "foundry", "rotate-key", "--no-new-key", "--home", str(home)],
        cwd=ROOT,
        env={**ENV, "FOUNDRY_KEYRING": str(ring)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"with key ops-2; dropped key(s): {old.current}" in result.stdout
    store = Store(home / "foundry.db", keyring=ring)
    try:
        assert set(store.sealed_labels()) == {"ops-2"}
        assert store.get_app("vaulted")["env"] == {"API_KEY": SECRET}
    finally:
        store.close()
