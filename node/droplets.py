"""The node's droplet cache: each droplet is downloaded and unpacked once per node.

`droplets/<sha256>/` holds an unpacked droplet (staging on this node puts its
result there directly). Each instance gets its own copy, so an app writing to its
directory cannot change the cache or another instance.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.archive import extract
from node.client import ControlClient


@dataclass
class DropletCache:
    root: Path
    client: ControlClient
    _locks: dict[str, trio.Lock] = field(default_factory=dict)

    async def ensure(self, digest: str) -> Path:
        """The unpacked droplet, downloading it first if this node lacks it."""
        target = self.root / digest
        lock = self._locks.setdefault(digest, trio.Lock())
        async with lock:
            if target.exists():
                return target
            self.root.mkdir(parents=True, exist_ok=True)
            blob = self.root / f".{digest}.tgz"
            partial = self.root / f".{digest}.partial"
            try:
                await self.client.download(digest, blob)
                await trio.to_thread.run_sync(shutil.rmtree, partial, True)
                await trio.to_thread.run_sync(
                    functools.partial(extract, blob, partial, absolute_symlinks=True)
                )
                partial.rename(target)
            finally:
                blob.unlink(missing_ok=True)
            return target

    async def checkout(self, digest: str, dest: Path) -> Path:
        """A private copy of the droplet at `dest`."""
        source = await self.ensure(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        await trio.run_process(["cp", "-a", "--reflink=auto", str(source), str(dest)])
        return dest
