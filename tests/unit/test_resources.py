"""Resource matching: the upload plan (pure), resource list validation, and the file
store round trip that assembles a source package from digests."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.blobs import BlobStore
from control.errors import BadRequest, Unprocessable
from control.resources import (
    MATCH_MIN_SIZE,
    Resource,
    assemble,
    matchable,
    missing,
    parse_resources,
    path_problem,
    store_files,
    upload_plan,
)
from control.uploads import ArchiveLimits, check_archive


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def res(path: str, data: bytes, mode: int = 0o644) -> Resource:
    return Resource(path, digest(data), mode, len(data))


A, B, C = res("a.py", b"a"), res("b.py", b"b"), res("lib/c.py", b"c")


@pytest.mark.parametrize(
    ("files", "missing_", "upload", "matched"),
    [
        ([A, B, C], [], [], [A, B, C]),  # nothing changed
        ([A, B, C], [B.sha256], [B], [A, C]),  # one file changed
        ([A, B], [A.sha256, B.sha256], [A, B], []),  # first push
        ([A, res("copy.py", b"a")], [A.sha256], [A], [res("copy.py", b"a")]),  # same bytes once
        ([A], [digest(b"unrelated")], [], [A]),  # unknown digests ignored
    ],
)
def test_upload_plan(
    files: list[Resource], missing_: list[str], upload: list[Resource], matched: list[Resource]
) -> None:
    plan = upload_plan(files, missing_)
    assert list(plan.upload) == upload
    assert list(plan.matched) == matched


def test_a_one_file_change_in_ten_thousand_files_uploads_one_file() -> None:
    files = [res(f"f{i}.txt", f"file {i}".encode()) for i in range(10_000)]
    changed = res("f5000.txt", b"changed")
    now = [*files[:5000], changed, *files[5001:]]
    have = {f.sha256 for f in files}
    plan = upload_plan(now, [r.sha256 for r in now if r.sha256 not in have])
    assert plan.upload == (changed,)
    assert len(plan.matched) == 9_999


@given(
    st.lists(st.sampled_from([b"x", b"y", b"z", b"w"]), max_size=12),
    st.sets(st.sampled_from([b"x", b"y", b"z", b"w"])),
)
def test_every_missing_digest_is_sent_exactly_once(
    contents: list[bytes], lacking: set[bytes]
) -> None:
    files = [res(f"f{i}", data) for i, data in enumerate(contents)]
    plan = upload_plan(files, [digest(d) for d in lacking])
    sent = [r.sha256 for r in plan.upload]
    assert len(sent) == len(set(sent))
    assert set(sent) == {digest(d) for d in lacking} & {r.sha256 for r in files}
    assert len(plan.upload) + len(plan.matched) == len(files)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "", ".", "a//b", "./a", "a\0b"]
)
def test_paths_that_cannot_be_in_a_package(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "body must be"),
        (
            {"resources": [{"path": "../x", "sha256": "0" * 64, "mode": 420, "size": 1}]},
            "resources[0].path '../x'",
        ),
        (
            {"resources": [{"path": "a", "sha256": "nope", "mode": 420, "size": 1}]},
            "resources[0].sha256",
        ),
        (
            {"resources": [{"path": "a", "sha256": "0" * 64, "mode": 0o4755, "size": 1}]},
            "resources[0].mode",
        ),
        (
            {"resources": [{"path": "a", "sha256": "0" * 64, "mode": 420, "size": -1}]},
            "resources[0].size",
        ),
    ],
)
def test_bad_resource_lists_name_the_entry(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_resources(body, ArchiveLimits())


def test_limits_apply_to_resource_lists() -> None:
    body = {"resources": [A.as_json(), B.as_json()]}
    with pytest.raises(Unprocessable):
        parse_resources(body, ArchiveLimits(max_files=1))
    with pytest.raises(Unprocessable):
        parse_resources(body, ArchiveLimits(max_expanded=1))


def tar_of(members: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_files_round_trip_into_a_safe_source_package(tmp_path: Path) -> None:
    files = BlobStore(tmp_path / "files")
    assert missing([A.sha256, B.sha256, A.sha256], set()) == [A.sha256, B.sha256]
    upload = tar_of({A.sha256: b"a", B.sha256: b"b"}, tmp_path / "up.tgz")
    assert store_files(upload, files, ArchiveLimits()) == [A.sha256, B.sha256]
    assert missing([A.sha256, B.sha256], {B.sha256}) == [A.sha256]
    script = res("bin/run", b"a", 0o755)
    assemble([A, B, script], files, tmp_path / "source.tgz", {A.sha256, B.sha256})
    assert check_archive(tmp_path / "source.tgz") == 3
    with tarfile.open(tmp_path / "source.tgz") as tar:
        assert sorted(tar.getnames()) == ["a.py", "b.py", "bin/run"]
        assert tar.getmember("bin/run").mode == 0o755
        assert tar.extractfile("b.py").read() == b"b"  # type: ignore[union-attr]


def test_the_same_resource_list_makes_the_same_package(tmp_path: Path) -> None:
    """An unchanged re-push must be recognisable by its source digest."""
    files = BlobStore(tmp_path / "files")
    store_files(
        tar_of({A.sha256: b"a", B.sha256: b"b"}, tmp_path / "up.tgz"), files, ArchiveLimits()
    )
    assemble([A, B], files, tmp_path / "one.tgz", {A.sha256, B.sha256})
    time.sleep(1.1)  # gzip headers carry whole seconds
    assemble([B, A], files, tmp_path / "two.tgz", {A.sha256, B.sha256})
    assert (tmp_path / "one.tgz").read_bytes() == (tmp_path / "two.tgz").read_bytes()


def test_only_stored_files_of_the_pool_minimum_size_are_matchable(tmp_path: Path) -> None:
    files = BlobStore(tmp_path / "files")
    big, edge, small = (
        b"x" * (MATCH_MIN_SIZE + 1),
        b"y" * MATCH_MIN_SIZE,
        b"z" * (MATCH_MIN_SIZE - 1),
    )
    store_files(
        tar_of({digest(d): d for d in (big, edge, small)}, tmp_path / "up.tgz"),
        files,
        ArchiveLimits(),
    )
    absent = digest(b"never stored")
    assert matchable([digest(big), digest(edge), digest(small), absent], files) == {
        digest(big),
        digest(edge),
    }


def test_a_stored_file_outside_the_callers_set_is_absent(tmp_path: Path) -> None:
    files = BlobStore(tmp_path / "files")
    store_files(tar_of({A.sha256: b"a"}, tmp_path / "up.tgz"), files, ArchiveLimits())
    with pytest.raises(Unprocessable) as theirs:
        assemble([A], files, tmp_path / "source.tgz", set())
    with pytest.raises(Unprocessable) as nobodys:
        assemble([res("a.py", b"never stored")], files, tmp_path / "source.tgz", set())
    assert theirs.value.message == nobodys.value.message


def test_a_file_whose_bytes_do_not_match_its_name_is_refused(tmp_path: Path) -> None:
    files = BlobStore(tmp_path / "files")
    with pytest.raises(Unprocessable, match="not"):
        store_files(tar_of({A.sha256: b"not a"}, tmp_path / "up.tgz"), files, ArchiveLimits())
    with pytest.raises(Unprocessable, match="only regular files named by their sha256"):
        store_files(tar_of({"../evil": b"x"}, tmp_path / "up2.tgz"), files, ArchiveLimits())
    assert not list(files.root.iterdir())


def test_assembling_with_a_file_the_store_lacks_names_it(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable, match=r"'lib/c\.py'"):
        assemble([C], BlobStore(tmp_path / "files"), tmp_path / "source.tgz", {C.sha256})


def test_a_listing_delta_carries_only_what_changed() -> None:
    from control.resources import apply_delta, listing_bytes, listing_delta

    base = [Resource(f"f{i}.txt", f"{i:064x}", 0o644, 10) for i in range(10_000)]
    previous = {r.path: (r.sha256, r.mode, r.size) for r in base}
    now = [
        *base[1:],
        Resource("f5.txt", "f" * 64, 0o644, 11),
        Resource("new.txt", "e" * 64, 0o600, 3),
    ]
    now = [r for r in now if r.path != "f5.txt" or r.sha256 == "f" * 64]
    changed, removed = listing_delta(previous, now)
    assert [r.path for r in changed] == ["f5.txt", "new.txt"]
    assert removed == ["f0.txt"]
    rebuilt = apply_delta(base, changed, removed)
    assert listing_bytes(rebuilt) == listing_bytes(now)  # the same source, the same bytes
