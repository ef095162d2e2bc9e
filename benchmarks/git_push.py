"""Seconds from `git push foundry main` to the new release answering through the edge
(warm: the app exists and its build cache is filled), median of N pushes.

    python benchmarks/git_push.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Foundry

IDENTITY = ["-c", "user.email=bench@example.test", "-c", "user.name=bench"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *IDENTITY, *args],
        check=True,
        capture_output=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with Foundry() as f, tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "app"
        shutil.copytree(ROOT / "examples" / "hello-python", repo)
        git(repo, "init", "-q", "-b", "main")
        f.cli("git-remote", "bench", "--dir", str(repo))
        times = []
        for n in range(1, runs + 2):
            (repo / "PUSHED").write_text(f"{n}\n")
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", f"push {n}")
            began = time.monotonic()
            git(repo, "push", "-q", "foundry", "main")
            while f.get("bench", "/env?FOUNDRY_RELEASE").text != f"v{n}":
                time.sleep(0.005)
            if n > 1:  # the first push creates the app and fills the build cache
                times.append(time.monotonic() - began)
    print(
        f"git push -> new release answering, warm, median of {runs}: "
        f"{statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
