"""A control plane serving TLS with a self-signed certificate: a node joins by pinning the
fingerprint its join token carries, and refuses a control plane whose certificate differs."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control.store import Store
from tests.e2e.conftest import ROOT, eventually, free_port

pytestmark = pytest.mark.slow


def ctx(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def tls_control(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    home = tmp_path / "control"
    home.mkdir()
    store = Store(home / "foundry.db")
    _, admin = store.create_token("admin")
    store.close()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundry",
            "control",
            "--home",
            str(home),
            "--listen",
            f"127.0.0.1:{port}",
            "--tls",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    cert = home / "tls" / "cert.pem"
    try:
        eventually(
            lambda: (
                cert.exists() and httpx.get(url + "/v1/health", verify=ctx(cert)).status_code == 200
            ),
            30,
            "control plane serving TLS",
        )
        yield url, admin, cert
    finally:
        proc.terminate()
        proc.wait(10)


def join(url: str, token: str, home: Path) -> subprocess.Popen[str]:
    # The token from the environment, as the README says (`--token` would show it in ps).
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundry",
            "node",
            "join",
            url,
            "--home",
            str(home),
            "--tier",
            "plain",
            "--name",
            "pinned",
        ],
        env={**os.environ, "FOUNDRY_JOIN_TOKEN": token},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_node_joins_by_pinning_the_certificate(
    tls_control: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, admin, cert = tls_control
    auth = {"authorization": f"Bearer {admin}"}
    minted = httpx.post(
        url + "/v1/tokens", json={"kind": "join", "uses": 1}, headers=auth, verify=ctx(cert)
    ).json()["token"]
    assert "#sha256:" in minted
    node = join(url, minted, tmp_path / "node")
    try:
        eventually(
            lambda: (
                [
                    n["name"]
                    for n in httpx.get(url + "/v1/nodes", headers=auth, verify=ctx(cert)).json()[
                        "nodes"
                    ]
                ]
                == ["pinned"]
            ),
            30,
            "the node to join over TLS",
        )
        assert (tmp_path / "node" / "control-cert.pem").read_text() == cert.read_text()
    finally:
        node.terminate()
        node.communicate(timeout=15)


def test_node_refuses_a_certificate_that_does_not_match(
    tls_control: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, _, _ = tls_control
    node = join(url, "fdy_x_y#sha256:" + "0" * 64, tmp_path / "node")
    began = time.monotonic()
    _, err = node.communicate(timeout=30)
    assert node.returncode == 1
    assert time.monotonic() - began < 30
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
    assert "does not match the join token's fingerprint" in err
