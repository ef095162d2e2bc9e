"""Content-addressed blob storage for source packages and droplets.

A blob lives at `<dir>/<sha256>`; it is written to a temp file in the same
directory, hashed while it streams in, size-capped, and renamed into place only
once complete, so a reader never sees half a blob and a failed upload leaves nothing.
An upload is refused (507) before it writes, and stopped as it streams, while the
disk's free space is under the reserve kept for the store (control/diskspace.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path

from control.diskspace import RECHECK_EVERY, DiskGuard
from control.errors import BadRequest, NotFound, TooLarge

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Blobs by sha256 digest under one directory."""

    def __init__(self, root: Path, reserve: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.guard = DiskGuard(root, reserve)

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise BadRequest(f"{digest!r} is not a sha256 hex digest")
        return self.root / digest

    def existing(self, digest: str) -> Path:
        path = self.path(digest)
        if not path.exists():
            raise NotFound(f"no blob {digest}")
        return path

    async def receive(self, chunks: AsyncGenerator[bytes, None], max_bytes: int) -> Path:
        """Stream chunks into a temp file beside the blobs; TooLarge past `max_bytes`
        (the chunks are closed then, not read to their end); 507 while the disk is under
        its reserve."""
        self.guard.check_room()
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        size = checked = 0
        try:
            async with contextlib.aclosing(chunks) as stream:
                with os.fdopen(fd, "wb") as out:
                    async for chunk in stream:
                        size += len(chunk)
                        if size > max_bytes:
                            raise TooLarge(f"upload is larger than the {max_bytes} byte limit")
                        if size - checked >= RECHECK_EVERY:
                            self.guard.check_room()
                            checked = size
                        out.write(chunk)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)

    def commit(self, temp: Path, expected: str | None = None) -> str:
        """Hash a received temp file and move it into place; returns its digest."""
        h = hashlib.sha256()
        with open(temp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            temp.unlink()
            raise BadRequest(f"upload digest is {digest}, not {expected}")
        os.replace(temp, self.root / digest)
        return digest

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
