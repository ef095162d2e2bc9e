"""Resource matching (Cloud Foundry's): a push uploads only the files the control plane lacks.

The CLI describes its source as resources (path, sha256, mode, size) and asks which
digests are `missing`; it sends just those files, in a gzip'd tar whose members are
named by their digest (`store_files`); then the control plane `assemble`s the source
package from its file store. The resource list itself is stored as a *listing* (a
blob named by its sha256): a later push sends only the entries that changed since
the listing it last pushed (`listing_delta` / `apply_delta`), so a one-file change
costs one entry and one file, not ten thousand digests. `upload_plan` is the CLI's
pure decision of what to send.

Invariants: a file blob is stored only under the sha256 of its bytes (verified as it
is stored); an assembled package obeys the rules of an uploaded one (relative paths
that stay inside the root, regular files only, permission bits at most 0o777, the
same count and size limits); a resource list that names a digest the store lacks is
refused (422, naming the file) and nothing is built; an upload of files is refused
whole (422, nothing stored) when a member is bad or the files expand past the package
size cap, which is checked from each member's header before its bytes are inflated.

Scope: a push may take from the store only files that an app the caller may act on
uploaded (the API records owners per app and drops files no app owns any more), and
files under `MATCH_MIN_SIZE` are never reported present, so they always travel with
the push (Cloud Controller's resource pool minimum). A file the caller may not use
answers exactly as one the store lacks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.blobs import BlobStore
from control.errors import BadRequest, Unprocessable
from control.uploads import ArchiveLimits

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MATCH_MIN_SIZE = 64 * 1024


@dataclass(frozen=True)
class Resource:
    """One file of an app's source."""

    path: str
    sha256: str
    mode: int
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "mode": self.mode, "size": self.size}


@dataclass(frozen=True)
class UploadPlan:
    """What a push sends: one file per digest the control plane lacks."""

    upload: tuple[Resource, ...]
    matched: tuple[Resource, ...]


def upload_plan(resources: Iterable[Resource], missing: Iterable[str]) -> UploadPlan:
    """Split the source into files to send (first file of each missing digest) and
    files the control plane already has."""
    wanted = set(missing)
    upload: list[Resource] = []
    matched: list[Resource] = []
    for r in resources:
        if r.sha256 in wanted:
            wanted.discard(r.sha256)
            upload.append(r)
        else:
            matched.append(r)
    return UploadPlan(tuple(upload), tuple(matched))


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a file of a source package, or None."""
    norm = posixpath.normpath(path)
    if not path or "\0" in path or path.startswith("/") or norm != path:
        return "must be a normalized relative path"
    if norm == "." or norm == ".." or norm.startswith("../"):
        return "leaves the app directory"
    return None


def _resource(raw: Any, where: str) -> Resource:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object with path, sha256, mode and size")
    path, digest, mode, size = (raw.get(k) for k in ("path", "sha256", "mode", "size"))
    if not isinstance(path, str) or path_problem(path):
        raise BadRequest(f"{where}.path {path!r}: {path_problem(str(path)) or 'not a string'}")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise BadRequest(f"{where}.sha256 must be a sha256 hex digest")
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise BadRequest(f"{where}.mode must be permission bits between 0 and 0o777")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{where}.size must be a byte count")
    return Resource(path, digest, mode, size)


def parse_resources(body: Any, limits: ArchiveLimits, key: str = "resources") -> list[Resource]:
    """The resource list of a request body; BadRequest naming the first bad entry."""
    raw = body.get(key) if isinstance(body, dict) else None
    if not isinstance(raw, list):
        raise BadRequest(f'body must be {{"{key}": [...]}}')
    if len(raw) > limits.max_files:
        raise Unprocessable(f"more than {limits.max_files} files")
    found = [_resource(item, f"{key}[{i}]") for i, item in enumerate(raw)]
    if sum(r.size for r in found) > limits.max_expanded:
        raise Unprocessable(f"files add up to more than {limits.max_expanded} bytes")
    return found


def parse_digests(body: Any, limits: ArchiveLimits) -> list[str]:
    """The digests a match request asks about."""
    raw = body.get("resources") if isinstance(body, dict) else None
    if not isinstance(raw, list) or len(raw) > limits.max_files:
        raise BadRequest(
            f'body must be {{"resources": [{{"sha256": ...}}]}} with at most '
            f"{limits.max_files} entries"
        )
    digests = [r.get("sha256") if isinstance(r, dict) else None for r in raw]
    for i, d in enumerate(digests):
        if not isinstance(d, str) or not _DIGEST.match(d):
            raise BadRequest(f"resources[{i}].sha256 must be a sha256 hex digest")
    return [str(d) for d in digests]


def store_files(upload: Path, files: BlobStore, limits: ArchiveLimits) -> list[str]:
    """Put each member of an uploaded tar (named by its sha256) into the file store;
    returns the digests stored. Refuses (422) anything else, and an upload whose files
    add up to more than the expanded-size cap before inflating past it; a refused upload
    stores nothing (members are staged and committed together at the end)."""
    staged: list[tuple[Path, str]] = []
    expanded = 0
    try:
        with tarfile.open(upload, mode="r:gz") as tar:
            for member in tar:
                if len(staged) >= limits.max_files:
                    raise Unprocessable(f"more than {limits.max_files} files")
                if not member.isfile() or not _DIGEST.match(member.name):
                    raise Unprocessable(
                        f"member {member.name!r}: only regular files named "
                        "by their sha256 may be uploaded"
                    )
                expanded += member.size
                if expanded > limits.max_expanded:
                    raise Unprocessable(f"files expand past {limits.max_expanded} bytes")
                staged.append((_stage_member(tar, member, files), member.name))
        for temp, digest in staged:
            os.replace(temp, files.path(digest))
    except (tarfile.TarError, zlib.error, EOFError) as e:
        raise Unprocessable(f"upload is not a gzip'd tar archive ({e})") from None
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return [d for _, d in staged]


def _stage_member(tar: tarfile.TarFile, member: tarfile.TarInfo, files: BlobStore) -> Path:
    """Copy a member into a temp file beside the store, checking it hashes to its name."""
    source = tar.extractfile(member)
    assert source is not None
    fd, name = tempfile.mkstemp(dir=files.root, prefix=".incoming-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: source.read(1 << 20), b""):
                h.update(block)
                out.write(block)
    except BaseException:
        Path(name).unlink()
        raise
    if h.hexdigest() != member.name:
        Path(name).unlink()
        raise Unprocessable(
            f"member {member.name[:12]}: its content does not hash to its "
            f"name (it hashes to {h.hexdigest()})"
        )
    return Path(name)


def missing(digests: Iterable[str], present: AbstractSet[str]) -> list[str]:
    """The digests not in `present`, each once, in the order asked."""
    seen: set[str] = set()
    out = []
    for d in digests:
        if d not in seen and d not in present:
            out.append(d)
        seen.add(d)
    return out


def matchable(digests: Iterable[str], files: BlobStore) -> set[str]:
    """Those of `digests` (already limited to the caller's files) that a push may skip
    uploading: stored, and at least MATCH_MIN_SIZE bytes by the stored file's own size,
    whatever size a request claims."""
    found = set()
    for d in set(digests):
        try:
            if files.path(d).stat().st_size >= MATCH_MIN_SIZE:
                found.add(d)
        except FileNotFoundError:
            pass
    return found


def assemble(
    resources: list[Resource], files: BlobStore, dest: Path, usable: AbstractSet[str]
) -> None:
    """Write the source package (gzip'd tar) for `resources` from the file store, taking
    only files whose digest is in `usable` (the caller's)."""
    absent = [
        r.path for r in resources if r.sha256 not in usable or not files.path(r.sha256).exists()
    ]
    if absent:
        raise Unprocessable(
            f"the control plane does not have {absent[0]!r} "
            f"({len(absent)} file(s) missing): upload them first"
        )
    paths = [r.path for r in resources]
    if len(set(paths)) != len(paths):
        raise BadRequest("a path appears twice in the resource list")
    # No time or file name in the gzip header (members carry mtime 0, sorted): the same
    # resource list always makes the same package, so an unchanged re-push is seen as one.
    with (
        open(dest, "wb") as out,
        gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for r in sorted(resources, key=lambda r: r.path):
            blob = files.path(r.sha256)
            info = tarfile.TarInfo(r.path)
            info.size = blob.stat().st_size
            info.mode = r.mode & 0o777
            with open(blob, "rb") as f:
                tar.addfile(info, f)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- listings: a source's resource list, stored once and changed by deltas ------------
def listing_bytes(found: Iterable[Resource]) -> bytes:
    """The canonical bytes of a resource list (sorted by path): the same source always
    gives the same listing, whose sha256 names it in the file store."""
    rows = sorted([r.path, r.sha256, r.mode, r.size] for r in found)
    return json.dumps(rows, separators=(",", ":")).encode()


def parse_listing(data: bytes, limits: ArchiveLimits) -> list[Resource]:
    """A stored listing back into resources, checked like any resource list."""
    try:
        rows = json.loads(data)
    except ValueError:
        raise Unprocessable("a stored listing is not valid JSON") from None
    if not isinstance(rows, list):
        raise Unprocessable("a stored listing must be a list")
    body = {
        "resources": [
            {"path": r[0], "sha256": r[1], "mode": r[2], "size": r[3]}
            if isinstance(r, list) and len(r) == 4
            else r
            for r in rows
        ]
    }
    return parse_resources(body, limits)


def apply_delta(
    base: Iterable[Resource], changed: Iterable[Resource], removed: Iterable[str]
) -> list[Resource]:
    """The listing after a push: the base, less removed paths, with changed entries
    added or replaced; sorted by path."""
    by_path = {r.path: r for r in base}
    for path in removed:
        by_path.pop(path, None)
    for r in changed:
        by_path[r.path] = r
    return [by_path[p] for p in sorted(by_path)]


def listing_delta(
    previous: dict[str, tuple[str, int, int]], found: Iterable[Resource]
) -> tuple[list[Resource], list[str]]:
    """What changed since the listing the control plane already has: (changed, removed)."""
    now = {r.path: r for r in found}
    changed = [r for p, r in sorted(now.items()) if previous.get(p) != (r.sha256, r.mode, r.size)]
    removed = sorted(set(previous) - set(now))
    return changed, removed
