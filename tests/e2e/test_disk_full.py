"""A full disk, said plainly: the platform's home on a 64 MiB tmpfs, filled by a file.

While it is full a push fails with one `no space left` line (not "internal error"), reads
and heartbeats keep answering, `foundry nodes` says the node's disk is full; once the
file is deleted the next push succeeds with nothing restarted.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Platform, eventually, started

TINY_WEB = Path(__file__).resolve().parents[1] / "apps" / "tiny-web"


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount / "home"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> None:
    """Write `path` until the filesystem has no more than `leave` bytes free."""
    with open(path, "ab") as out:
        while True:
            stat = os.statvfs(path)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave:
                return
            try:
                out.write(b"\0" * min(1 << 20, max(free - leave, 4096)))
                out.flush()
            except OSError:
                return


def test_full_disk_is_said_plainly_and_passes(small_home: Path) -> None:
    with started(Platform(small_home)) as p:
        p.cli("push", str(TINY_WEB), "--name", "before")
        filler = small_home.parent / "filler"

        # under the store's reserve: uploads are refused before they write
        fill(filler, leave=512 << 10)
        refused = p.cli("push", str(TINY_WEB), "--name", "during", check=False)
        assert refused.returncode != 0
        assert "no space left on the control plane's disk" in refused.stderr, refused.stderr
        assert "internal error" not in refused.stderr
        assert "no space left" in refused.stderr.strip().splitlines()[-1], refused.stderr
        assert "before" in p.cli("apps").stdout
        eventually(
            lambda: "disk full" in p.cli("nodes").stdout,
            20,
            "foundry nodes to say the node's disk is full",
        )

        # completely full: the store cannot write, yet reads answer and nothing is a 500
        fill(filler, leave=0)
        assert p.api("GET", "/v1/apps").status_code == 200
        assert p.api("GET", "/v1/nodes").status_code == 200
        scale = p.api("POST", "/v1/apps/before/scale", json={"instances": 2})
        assert scale.status_code in (200, 507), scale.text
        if scale.status_code == 507:
            assert "no space left on the control plane's disk" in scale.json()["error"]
        time.sleep(5)  # two heartbeats and a few work polls while nothing can be written
        logs = "".join(f.read_text(errors="replace") for f in (small_home / "logs").glob("*.log"))
        assert "internal error" not in logs
        assert "Traceback" not in logs

        # space returns: the next push goes through, nothing restarted
        filler.unlink()
        p.cli("push", str(TINY_WEB), "--name", "after")
        eventually(lambda: p.get("after").status_code == 200, 60, "the app after space returned")
        eventually(
            lambda: "disk full" not in p.cli("nodes").stdout, 70, "the node to say it has space"
        )
