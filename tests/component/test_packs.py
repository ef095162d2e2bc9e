"""The built-in packs' detect scripts, run for real on sample build dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.packs import detect, installed_packs
from packs import PACKS_DIR

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("files", "pack"),
    [
        ({"requirements.txt": "flask\n"}, "python"),
        ({"pyproject.toml": "[project]\nname='x'\n", "Procfile": "web: x"}, "python"),
        ({"package.json": "{}", "server.js": ""}, "node"),
        ({"index.html": "<p>hi</p>"}, "static"),
        ({"Procfile": "worker: python3 w.py", "w.py": ""}, "procfile"),
        ({"README": "nothing to run"}, None),
    ],
)
async def test_detection_order(tmp_path: Path, files: dict[str, str], pack: str | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = await detect(installed_packs(PACKS_DIR), tmp_path, ENV)
    assert (found.name if found else None) == pack


def test_built_in_packs_are_installed_in_order() -> None:
    names = [p.name for p in installed_packs(PACKS_DIR)]
    assert names[:4] == ["python", "node", "static", "procfile"]
