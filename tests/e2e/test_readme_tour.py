"""The README's five-minute tour, run literally against a fresh `foundry up`, so the README
cannot drift from the product: every command of its first ```sh block exits 0, a `curl`
answers with the body its comment shows, a following `logs -f` keeps following, and
`delete` is answered "y" on a terminal, as the user would.

The platform runs on random ports with FOUNDRY_HOME set, so `foundry ...` lines work as
written; in `curl` lines only the edge's port 8080 becomes the test platform's.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ROOT, Platform, started

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]


def tour_lines(readme: str) -> list[str]:
    """The lines of the first ```sh block after the "A five-minute tour" heading."""
    after = readme.split("## A five-minute tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None, "the tour has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_tour_is_a_sh_block_of_foundry_and_curl_lines() -> None:
    lines = tour_lines((ROOT / "README.md").read_text())
    assert len(lines) >= 10
    assert {shlex.split(line, comments=True)[0] for line in lines} <= {"foundry", "curl"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with started(Platform(tmp_path_factory.mktemp("tour") / "home")) as p:
        yield p


def run_on_a_terminal(
    argv: list[str], env: dict[str, str], answer: bytes
) -> subprocess.CompletedProcess[str]:
    master, slave = pty.openpty()
    try:
        os.write(master, answer)
        return subprocess.run(
            argv, cwd=ROOT, env=env, stdin=slave, capture_output=True, text=True, timeout=240
        )
    finally:
        os.close(slave)
        os.close(master)


def follow_briefly(argv: list[str], env: dict[str, str]) -> tuple[bool, str]:
    """Run a following command for a few seconds: (still following?, what it printed)."""
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        time.sleep(4)  # the check itself: a follower is still running after a while
        following = proc.poll() is None
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    return following, out


def test_the_readme_tour_works_as_written(fresh: Platform) -> None:
    began = time.monotonic()
    for line in tour_lines((ROOT / "README.md").read_text()):
        words = shlex.split(line, comments=True)
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        if words[0] == "curl":
            argv = [
                "curl",
                "-sS",
                "--max-time",
                "10",
                *(w.replace("localhost:8080", f"localhost:{fresh.http_port}") for w in words[1:]),
            ]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, f"{line}\n{done.stderr}"
            assert done.stdout.strip() == comment, f"{line}: got {done.stdout!r}"
            continue
        argv = [sys.executable, "-m", "foundry", *words[1:]]
        if words[1] == "logs" and {"-f", "--follow", "--tail"} & set(words):
            following, out = follow_briefly(argv, fresh.env)
            assert following, f"{line}: {out}"
            assert out.strip(), f"{line}: {out}"
            continue
        if words[1] == "delete":
            done = run_on_a_terminal(argv, fresh.env, b"y\n")
        else:
            done = subprocess.run(
                argv, cwd=ROOT, env=fresh.env, capture_output=True, text=True, timeout=240
            )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}\n{fresh.logs()}"
    assert fresh.cli("app", "hello-python", check=False).returncode == 1  # deleted
    assert time.monotonic() - began < 600
