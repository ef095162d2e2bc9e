"""Reading what a build left: links are refused wherever they are on the path, only
regular files are read (a FIFO never blocks the reader), sizes are capped, and no
error quotes the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.confined import ConfinedError, read_confined

SECRET = "admin-token-0123456789"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_text(f"web: {SECRET}\n")
    return path


@pytest.fixture
def build(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    (root / "conf").mkdir(parents=True)
    return root


def test_a_regular_file_is_read_and_a_missing_one_is_none(build: Path) -> None:
    (build / "Procfile").write_text("web: python app.py\n")
    (build / "conf" / "release.yml").write_text("---\n")
    assert read_confined(build, "Procfile", 1024) == b"web: python app.py\n"
    assert read_confined(build, "conf/release.yml", 1024) == b"---\n"
    assert read_confined(build, "nothing", 1024) is None
    assert read_confined(build, "nothing/below", 1024) is None
    assert read_confined(build, "Procfile/below", 1024) is None


@pytest.mark.parametrize("target", ["host", "relative-out", "inside"])
def test_a_link_is_refused_without_reading_its_target(
    build: Path, secret: Path, target: str
) -> None:
    (build / "Procfile.real").write_text("web: x\n")
    link = {"host": str(secret), "relative-out": f"../{secret.name}", "inside": "Procfile.real"}[
        target
    ]
    os.symlink(link, build / "Procfile")
    with pytest.raises(ConfinedError, match="Procfile is a symbolic link") as refused:
        read_confined(build, "Procfile", 1024)
    assert SECRET not in str(refused.value)


def test_a_link_on_the_way_is_refused(build: Path, secret: Path) -> None:
    os.symlink(secret.parent, build / "up")
    with pytest.raises(ConfinedError, match="up is a symbolic link"):
        read_confined(build, f"up/{secret.name}", 1024)


def test_a_fifo_is_refused_without_blocking(build: Path) -> None:
    os.mkfifo(build / "Procfile")  # opening it for reading would wait for a writer
    with pytest.raises(ConfinedError, match="Procfile is not a regular file"):
        read_confined(build, "Procfile", 1024)


def test_a_directory_or_an_oversized_file_is_refused(build: Path) -> None:
    with pytest.raises(ConfinedError, match="conf is not a regular file"):
        read_confined(build, "conf", 1024)
    (build / "Procfile").write_bytes(b"web: x\n" * 1000)
    with pytest.raises(ConfinedError, match="larger than 1024 bytes"):
        read_confined(build, "Procfile", 1024)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../b", "./Procfile"])
def test_only_plain_relative_paths_are_asked_for(build: Path, path: str) -> None:
    with pytest.raises(ValueError, match="not a plain relative path"):
        read_confined(build, path, 1024)
