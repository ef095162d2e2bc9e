"""Reading files a build left behind, as if an attacker wrote them.

The node agent reads a few files from a finished build (the Procfile) with more
privilege than the build had: as root, outside the jail. A build step can replace
any of them with a symbolic link to a host file (the admin token, /etc/shadow), a
FIFO that blocks the reader, or something huge. So every such read goes through
`read_confined`, whose rules are:

* the path is walked one component at a time, each opened with O_NOFOLLOW relative
  to the directory opened before it, starting from the build root: a symbolic link
  anywhere on the path is refused, never followed (not even one that stays inside);
* the last component must be a regular file (opened non-blocking, so a FIFO is seen
  and refused rather than waited on), no larger than the caller's cap;
* errors name the file and say why, never what it holds.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class ConfinedError(ValueError):
    """A build output that may not be read; the message names it and says why."""


_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _step(name: str, dir_fd: int, shown: str) -> int | None:
    """Open one path component below `dir_fd` without following a link (None: absent)."""
    try:
        return os.open(name, _OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfinedError(
                f"{shown} is a symbolic link: the build must leave a real file there, not a link"
            ) from None
        raise ConfinedError(f"{shown} cannot be opened ({os.strerror(e.errno or 0)})") from None


def read_confined(root: Path, relative: str, max_bytes: int) -> bytes | None:
    """The bytes of `root/relative`, or None when it does not exist; ConfinedError when
    any component is a link, the file is not a regular file, or it exceeds `max_bytes`."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {relative!r}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            child = _step(part, fd, shown)
            if child is None:
                return None
            os.close(fd)
            fd = child
            mode = os.fstat(fd).st_mode
            if i < len(parts) - 1 and not stat.S_ISDIR(mode):
                return None  # a file where a directory would be: nothing at `relative`
        return _read_regular(fd, relative, max_bytes)
    finally:
        os.close(fd)


def _read_regular(fd: int, shown: str, max_bytes: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ConfinedError(f"{shown} is not a regular file")
    if info.st_size > max_bytes:
        raise ConfinedError(f"{shown} is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, min(1 << 16, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:  # it grew after the fstat
            raise ConfinedError(f"{shown} is larger than {max_bytes} bytes")
    return b"".join(chunks)
