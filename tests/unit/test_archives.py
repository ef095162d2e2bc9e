"""Untrusted archives: the control plane's upload check and the node's extraction refuse
the same hostile members, and extraction never writes outside its target."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from control.errors import Unprocessable
from control.uploads import ArchiveLimits, check_archive
from node.archive import ArchiveError, create, extract


def make_tar(path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def file_member(
    name: str, data: bytes = b"x", mode: int = 0o644
) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, io.BytesIO(data)


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


HOSTILE = {
    "absolute": lambda t: t.addfile(*file_member("/etc/evil")),
    "dotdot": lambda t: t.addfile(*file_member("../evil")),
    "nested-dotdot": lambda t: t.addfile(*file_member("a/../../evil")),
    "symlink-out": lambda t: t.addfile(link("l", "../../etc/passwd", tarfile.SYMTYPE)),
    "symlink-abs": lambda t: t.addfile(link("l", "/etc/passwd", tarfile.SYMTYPE)),
    "hardlink-out": lambda t: t.addfile(link("h", "../outside", tarfile.LNKTYPE)),
    "device": lambda t: t.addfile(special("dev", tarfile.CHRTYPE)),
    "fifo": lambda t: t.addfile(special("fifo", tarfile.FIFOTYPE)),
    "setuid": lambda t: t.addfile(*file_member("suid", mode=0o4755)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_by_both_checks(tmp_path: Path, case: str) -> None:
    archive = make_tar(tmp_path / "a.tgz", HOSTILE[case])
    with pytest.raises(Unprocessable, match="refused"):
        check_archive(archive)
    target = tmp_path / "out" / "app"
    with pytest.raises(ArchiveError, match="refused"):
        extract(archive, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "out"]
    assert not (tmp_path / "evil").exists()


def test_tar_bomb_is_refused_before_unpacking(tmp_path: Path) -> None:
    def bomb(t: tarfile.TarFile) -> None:
        for i in range(50):
            t.addfile(*file_member(f"f{i}", b"\0" * 100_000))

    archive = make_tar(tmp_path / "bomb.tgz", bomb)
    assert archive.stat().st_size < 100_000
    with pytest.raises(Unprocessable, match="expands past"):
        check_archive(archive, ArchiveLimits(max_expanded=1_000_000))
    with pytest.raises(Unprocessable, match="more than 10 members"):
        check_archive(archive, ArchiveLimits(max_files=10))
    with pytest.raises(ArchiveError, match="limits"):
        extract(archive, tmp_path / "x", max_expanded=1_000_000)
    assert not (tmp_path / "x").exists()


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not gzip at all")
    with pytest.raises(Unprocessable, match="not a gzip'd tar"):
        check_archive(junk)
    with pytest.raises(ArchiveError):
        extract(junk, tmp_path / "x")


def test_safe_archive_with_inner_links_round_trips(tmp_path: Path) -> None:
    def good(t: tarfile.TarFile) -> None:
        t.addfile(*file_member("dir/a.txt", b"hello"))
        t.addfile(link("dir/b.txt", "a.txt", tarfile.SYMTYPE))
        t.addfile(link("c.txt", "dir/a.txt", tarfile.LNKTYPE))

    archive = make_tar(tmp_path / "ok.tgz", good)
    assert check_archive(archive) == 3
    assert extract(archive, tmp_path / "app") == 3
    assert (tmp_path / "app" / "dir" / "b.txt").read_text() == "hello"
    assert (tmp_path / "app" / "c.txt").read_text() == "hello"


def test_droplets_keep_absolute_symlinks_but_nothing_is_written_through_them(
    tmp_path: Path,
) -> None:
    def venv(t: tarfile.TarFile) -> None:
        t.addfile(link(".venv/bin/python", "/usr/bin/python3", tarfile.SYMTYPE))

    archive = make_tar(tmp_path / "droplet.tgz", venv)
    with pytest.raises(ArchiveError):
        extract(archive, tmp_path / "source")  # not in a source package
    extract(archive, tmp_path / "droplet", absolute_symlinks=True)
    assert os.readlink(tmp_path / "droplet" / ".venv/bin/python") == "/usr/bin/python3"

    def through(t: tarfile.TarFile) -> None:
        t.addfile(link("etc", "/etc", tarfile.SYMTYPE))
        t.addfile(*file_member("etc/evil"))

    archive = make_tar(tmp_path / "through.tgz", through)
    with pytest.raises((ArchiveError, tarfile.TarError)):
        extract(archive, tmp_path / "x", absolute_symlinks=True)
    assert not Path("/etc/evil").exists()
    assert not (tmp_path / "x").exists()


def test_droplet_links_may_chain_to_an_absolute_target(tmp_path: Path) -> None:
    def venv(t: tarfile.TarFile) -> None:
        t.addfile(link("bin/python", "/usr/bin/python3.11", tarfile.SYMTYPE))
        t.addfile(link("bin/python3", "python", tarfile.SYMTYPE))

    archive = make_tar(tmp_path / "droplet.tgz", venv)
    extract(archive, tmp_path / "droplet", absolute_symlinks=True)
    assert os.readlink(tmp_path / "droplet" / "bin/python3") == "python"


def built_app(root: Path) -> Path:
    """What a build may leave: files, dirs, inner and absolute links, a hard link."""
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / "app.py").write_text("print('hi')\n")
    os.symlink("/usr/bin/python3", root / ".venv" / "bin" / "python")
    os.symlink("../../app.py", root / ".venv" / "bin" / "app")
    os.link(root / "app.py", root / "copy.py")
    return root


def test_a_droplet_packs_links_as_links_and_unpacks_on_another_node(tmp_path: Path) -> None:
    create(built_app(tmp_path / "build"), tmp_path / "droplet.tgz")
    extract(tmp_path / "droplet.tgz", tmp_path / "node", absolute_symlinks=True)
    assert os.readlink(tmp_path / "node" / ".venv" / "bin" / "python") == "/usr/bin/python3"
    assert (tmp_path / "node" / ".venv" / "bin" / "app").read_text() == "print('hi')\n"
    assert (tmp_path / "node" / "copy.py").read_text() == "print('hi')\n"


@pytest.mark.parametrize("leave", ["fifo", "setuid", "setgid-dir", "relative-link-out"])
def test_a_droplet_refuses_what_no_node_would_unpack(tmp_path: Path, leave: str) -> None:
    build = built_app(tmp_path / "build")
    if leave == "fifo":
        os.mkfifo(build / "pipe")
    elif leave == "setuid":
        (build / "tool").write_text("#!/bin/sh\n")
        os.chmod(build / "tool", 0o4755)
    elif leave == "setgid-dir":
        (build / "shared").mkdir()
        os.chmod(build / "shared", 0o2775)
    else:
        os.symlink("../../../etc/shadow", build / ".venv" / "escape")
    with pytest.raises(ArchiveError, match=r"the build left .*which a droplet may not hold"):
        create(build, tmp_path / "droplet.tgz")


def test_the_same_build_output_makes_the_same_droplet(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "lib" / "mod.py").write_text("x = 1\n")
    (app / "Procfile").write_text("web: python3 -m http.server\n")
    create(app, tmp_path / "one.tgz")
    os.utime(app / "lib", (12345, 12345))  # another build made the folder at another time
    if os.geteuid() == 0:
        os.chown(app / "lib" / "mod.py", 3666004, 3666004)  # as another throwaway uid
    create(app, tmp_path / "two.tgz")
    one = (tmp_path / "one.tgz").read_bytes()
    assert one[4:8] == b"\0\0\0\0"  # no gzip timestamp
    assert one == (tmp_path / "two.tgz").read_bytes()
