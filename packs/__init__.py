"""Foundry's built-in buildpacks (Heroku classic API), shipped as package data.

Owns the detection order of the built-in packs, which the node (to detect) and the
control plane (to list them with `foundry buildpacks`) both read from here: a pack is
a folder with `bin/detect`; known names come first in DEFAULT_ORDER, others after,
alphabetically.
"""

from __future__ import annotations

from pathlib import Path

PACKS_DIR = Path(__file__).resolve().parent
DEFAULT_ORDER = ("python", "node", "static", "procfile")


def ordered_names(root: Path = PACKS_DIR, order: tuple[str, ...] = DEFAULT_ORDER) -> list[str]:
    """Names of the packs under `root`, in detection order."""
    found = {p.name for p in root.iterdir() if (p / "bin" / "detect").exists()}
    return [n for n in order if n in found] + sorted(found - set(order))
