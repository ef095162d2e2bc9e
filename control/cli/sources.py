"""The client side of sending an app's source (and a local buildpack) to the control plane.

Rules kept here:
  * What is sent honours the ignore files (.foundryignore, .cfignore) on top of
    DEFAULT_IGNORES, and walks the directory in sorted order (the same tree gives the
    same upload).
  * Resource matching first: the source's file list goes as a delta against the list last
    pushed for the app (remembered per API under the home's `listings/`), and only the
    files the control plane lacks are uploaded. A tree holding anything matching cannot
    carry (a symlink) goes as one tarball instead.
  * A local buildpack is packed reproducibly (no gzip timestamp, no owner names): the same
    directory gives the same blob, whose digest names the node's copy and its build cache.
  * Progress goes to the Reporter; nothing here prints.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from control.cli.client import Api, CLIError, Reporter
from control.config import foundry_home
from control.resources import Resource, listing_delta, sha256_of, upload_plan

DEFAULT_IGNORES = (".git", ".hg", ".svn", ".DS_Store", "__pycache__", ".venv", "*.pyc")


def ignore_patterns(directory: Path) -> list[str]:
    """DEFAULT_IGNORES plus the lines of the directory's ignore files."""
    patterns = list(DEFAULT_IGNORES)
    for name in (".foundryignore", ".cfignore"):
        f = directory / name
        if f.is_file():
            patterns += [
                ln.strip()
                for ln in f.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            ]
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """A path matches a pattern whole, or in any of its parts."""
    parts = rel.split("/")
    for pattern in patterns:
        p = pattern.strip("/")
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts):
            return True
    return False


def source_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of each file to upload, honouring ignore files, sorted."""
    patterns = ignore_patterns(directory)
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        dirs[:] = sorted(
            d for d in dirs if not ignored(os.path.normpath(os.path.join(rel_root, d)), patterns)
        )
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not ignored(rel, patterns):
                yield rel, Path(root) / name


def default_app_name(directory: Path) -> str:
    return directory.resolve().name.lower().replace("_", "-").replace(".", "-")


def pack_source(directory: Path, dest: Path) -> int:
    """Write the app directory as a gzip'd tar, honouring ignore files; returns file count."""
    count = 0
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for rel, path in source_files(directory):
            tar.add(path, arcname=rel, recursive=False)
            count += 1
    return count


def upload_chunks(path: Path, report: Reporter) -> Iterator[bytes]:
    """The file's bytes in blocks, reporting how much is sent."""
    total = path.stat().st_size
    sent = 0
    with open(path, "rb") as f:
        while block := f.read(256 * 1024):
            sent += len(block)
            report.uploading(sent, total)
            yield block
    report.uploaded()


def scan_resources(directory: Path) -> list[Resource] | None:
    """The source as resources (path, sha256, mode, size); None when it holds something
    resource matching cannot carry (a symlink), so the whole tarball is sent instead."""
    found = []
    for rel, path in source_files(directory):
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            return None
        found.append(Resource(rel, sha256_of(path), stat.S_IMODE(st.st_mode) & 0o777, st.st_size))
    return found


def upload_files(
    api: Api,
    name: str,
    directory: Path,
    found: list[Resource],
    missing: list[str],
    report: Reporter,
) -> int:
    """Resource matching: send only files the control plane lacks (recorded as app
    `name`'s); returns bytes sent."""
    plan = upload_plan(found, missing)
    report.say(
        f"{len(plan.matched)} of {len(found)} files already on the control plane; "
        f"uploading {len(plan.upload)}"
    )
    if not plan.upload:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "files.tgz"
        with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
            for r in plan.upload:
                tar.add(directory / r.path, arcname=r.sha256, recursive=False)
        api.request(
            "POST",
            "/v1/resources",
            params={"app": name},
            content=upload_chunks(tarball, report),
            timeout=600,
        )
        return tarball.stat().st_size


def gzip_json(data: Any) -> bytes:
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0)


def listing_cache(api: Api, name: str) -> Path:
    """Where the CLI remembers the listing it last pushed for an app of this API."""
    tag = hashlib.sha256(api.url.encode()).hexdigest()[:12]
    return foundry_home() / "listings" / tag / f"{name}.json"


def _remembered(cache: Path) -> dict[str, Any]:
    """The listing last pushed ({} when none, or unreadable)."""
    try:
        found = json.loads(cache.read_text()) if cache.exists() else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def send_listing(api: Api, name: str, found: list[Resource]) -> tuple[str, list[str], int]:
    """Tell the control plane the source's resource list as a delta against the listing
    last pushed (the whole list when there is none or it is gone); returns (listing
    digest, missing file digests, bytes sent)."""
    cache = listing_cache(api, name)
    previous = _remembered(cache)
    for base in ([previous["listing"]] if previous.get("listing") else []) + [None]:
        entries = {p: tuple(v) for p, v in previous.get("entries", {}).items()} if base else {}
        changed, removed = listing_delta(entries, found)
        body = gzip_json(
            {"base": base, "changed": [r.as_json() for r in changed], "removed": removed}
        )
        try:
            answer = api.request(
                "POST",
                "/v1/resources/listing",
                content=body,
                timeout=120,
                params={"app": name},
                headers={"content-encoding": "gzip", "content-type": "application/json"},
            )
        except CLIError:
            if base is None:
                raise
            continue  # the control plane lost that listing: send the whole list
        cache.parent.mkdir(parents=True, exist_ok=True)
        entries_now = {r.path: [r.sha256, r.mode, r.size] for r in found}
        cache.write_text(json.dumps({"listing": answer["listing"], "entries": entries_now}))
        return answer["listing"], answer["missing"], len(body)
    raise CLIError("the control plane refused the resource list")


def resolve_buildpack(api: Api, name: str, buildpack: str, report: Reporter) -> str:
    """A local pack directory is uploaded (-> blob:<sha256>); names and URLs pass as they are."""
    if "://" in buildpack or ("/" not in buildpack and not Path(buildpack).is_dir()):
        return buildpack
    directory = Path(buildpack)
    if not (directory / "bin" / "compile").is_file():
        raise CLIError(f"--buildpack {buildpack}: not a buildpack directory (no bin/compile)")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "buildpack.tgz"
        with (
            open(tarball, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w") as tar,
        ):
            for rel, path in source_files(directory):
                tar.add(path, arcname=rel, recursive=False, filter=_anonymous)
        report.say(f"Uploading buildpack {directory}")
        answer = api.request(
            "POST",
            f"/v1/apps/{name}/buildpack",
            content=upload_chunks(tarball, report),
            timeout=600,
        )
    return str(answer["buildpack"])


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
