"""Finding and running buildpacks (Heroku's classic API) on a build directory.

A pack is a directory with `bin/detect`, `bin/compile` and `bin/release`. Detection
tries packs in order; the first whose `bin/detect BUILD_DIR` exits 0 wins, and its
stdout names it. Scripts are run with an explicit interpreter when they are not
executable (a wheel install may drop the mode bits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trio

DEFAULT_ORDER = ("python", "node", "static", "procfile")


@dataclass(frozen=True)
class Pack:
    name: str
    path: Path

    def script(self, name: str) -> list[str]:
        """argv prefix that runs bin/<name>."""
        path = self.path / "bin" / name
        return [str(path)] if os.access(path, os.X_OK) else ["/bin/sh", str(path)]


def installed_packs(root: Path, order: tuple[str, ...] = DEFAULT_ORDER) -> list[Pack]:
    """Packs under `root`, in detection order (known names first, then alphabetical)."""
    found = {p.name: p for p in root.iterdir() if (p / "bin" / "detect").exists()}
    ranked = [n for n in order if n in found] + sorted(set(found) - set(order))
    return [Pack(n, found[n]) for n in ranked]


async def detect(packs: list[Pack], build_dir: Path, env: dict[str, str]) -> Pack | None:
    """The first pack that claims the build directory."""
    for pack in packs:
        with trio.move_on_after(30):
            result = await trio.run_process([*pack.script("detect"), str(build_dir)],
                                            capture_stdout=True, capture_stderr=True,
                                            check=False, env=env)
            if result.returncode == 0:
                return pack
    return None
