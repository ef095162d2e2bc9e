"""Checks a source package before the control plane accepts it.

A package is a gzip'd tar. Every member must stay inside the archive's root:
no absolute paths, no `..`, no links that leave the root, no devices or FIFOs,
no setuid/setgid bits; member count and expanded size are capped (an archive
bomb is refused before anything is unpacked). The node agent re-checks as it
extracts: it never trusts what it downloads.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from control.errors import Unprocessable


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 200_000
    max_expanded: int = 1 << 30  # 1 GiB, as Cloud Foundry's package limit


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why this member may not be extracted, or None when it is safe."""
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../"):
        return "path leaves the archive root"
    if member.isdev() or member.isfifo():
        return "device or FIFO"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "unsupported member type"
    if member.mode & 0o6000:
        return "setuid/setgid bit"
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(norm) if member.issym() else ""
        joined = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            return f"link to {target!r} leaves the archive root"
    return None


def check_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> int:
    """Refuse (422, naming the member) any archive that is not a safe gzip'd tar; returns
    the member count."""
    count = expanded = 0
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                count += 1
                expanded += max(member.size, 0)
                problem = member_problem(member)
                if problem:
                    raise Unprocessable(f"archive member {member.name!r} refused: {problem}")
                if count > limits.max_files:
                    raise Unprocessable(f"archive has more than {limits.max_files} members")
                if expanded > limits.max_expanded:
                    raise Unprocessable(f"archive expands past {limits.max_expanded} bytes")
    except (tarfile.TarError, zlib.error, EOFError, OSError) as e:
        raise Unprocessable(f"upload is not a gzip'd tar archive ({e})") from None
    return count
