"""Safe extraction of untrusted archives (source packages and droplets).

Nothing an archive holds may be written outside its target directory: members with
absolute paths or `..`, links leaving the root, devices, FIFOs and setuid/setgid
bits are refused; member count and expanded size are capped. Extraction goes into
a fresh directory that is removed whole if any member is refused. (The control
plane checks uploads the same way; the node does not trust that it did.)
"""

from __future__ import annotations

import gzip
import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path

MAX_FILES = 200_000
MAX_EXPANDED = 4 << 30


class ArchiveError(ValueError):
    """An archive that was refused, naming the member."""


def _problem(member: tarfile.TarInfo, absolute_symlinks: bool = False) -> str | None:
    norm = posixpath.normpath(member.name)
    if member.name.startswith("/") or norm == ".." or norm.startswith("../"):
        return "path leaves the archive root"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "device, FIFO or unsupported member type"
    if member.mode & 0o6000:
        return "setuid/setgid bit"
    if absolute_symlinks and member.issym() and member.linkname.startswith("/"):
        return None
    if member.issym() or member.islnk():
        base = posixpath.dirname(norm) if member.issym() else ""
        joined = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or joined == ".." or joined.startswith("../"):
            return f"link to {member.linkname!r} leaves the archive root"
    return None


def extract(
    archive: Path,
    target: Path,
    *,
    max_files: int = MAX_FILES,
    max_expanded: int = MAX_EXPANDED,
    absolute_symlinks: bool = False,
) -> int:
    """Extract a gzip'd tar into `target` (which must not exist); returns the member count.

    `absolute_symlinks` admits symlinks to absolute paths (a droplet's virtualenv links
    its interpreter to the system's); making such a link writes nothing outside the
    target, and no later member may be written through it: the path of every member
    is resolved, links included, and must stay inside the target."""
    target.mkdir(parents=True)
    try:
        count = expanded = 0
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                count += 1
                expanded += max(member.size, 0)
                problem = _problem(member, absolute_symlinks)
                if problem:
                    raise ArchiveError(f"archive member {member.name!r} refused: {problem}")
                if count > max_files or expanded > max_expanded:
                    raise ArchiveError("archive is larger than the extraction limits")
                # The "data" filter re-checks paths and links and drops unsafe modes.
                # "data" also resolves link targets through links already extracted (a
                # droplet's python3 -> python -> /usr/bin/python3.11); with absolute links
                # admitted, targets are checked lexically above and "tar" keeps every other
                # check, including no member written through a link.
                lenient = absolute_symlinks and member.issym()
                tar.extract(member, target, filter="tar" if lenient else "data")
        return count
    except (tarfile.TarError, zlib.error, EOFError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise ArchiveError(f"not a valid gzip'd tar archive ({e})") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _droplet_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    problem = _problem(member, absolute_symlinks=True)
    if problem:
        raise ArchiveError(
            f"the build left {member.name!r}, which a droplet may not hold: {problem}"
        )
    # Which throwaway uid built it, and when the build made a folder, say nothing about
    # the app (nodes unpack without owners) and would make every droplet differ.
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    if member.isdir():
        member.mtime = 0
    return member


def create(source: Path, archive: Path) -> None:
    """Pack a build directory into a droplet, a gzip'd tar (fast compression: droplets are
    rebuilt often), refusing what `extract(..., absolute_symlinks=True)` would refuse on
    the nodes that unpack it (FIFOs, devices, setuid bits, relative links leaving it).
    Links are stored as links, never followed; call it only once every process of the
    build is gone, so nothing can swap a checked path for a link while it is read.

    The same build output gives the same bytes (no gzip timestamp or name, no owners,
    folders undated; files keep their times, which Python's bytecode checks compare),
    so an unchanged re-push yields the droplet digest of the release it already runs."""
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name, filter=_droplet_member)
