"""Grouping a node's processes into instances from one /proc pass: pure functions, and the
scanner over a /proc laid out in a temporary directory (the reader is a real seam)."""

from __future__ import annotations

from pathlib import Path

from node.proctree import (
    MARKER,
    PAGE,
    Limits,
    Proc,
    ProcFS,
    Scanner,
    Table,
    marker_of,
    over_limit,
    parse_stat,
)


def stat_line(pid: int, ppid: int, state: str = "S", start: int = 100, rss: int = 10) -> str:
    rest = ["0"] * 50
    rest[0], rest[1], rest[19], rest[21] = state, str(ppid), str(start), str(rss)
    return f"{pid} (odd ) name) " + " ".join(rest) + "\n"


def test_parse_stat_reads_parent_start_and_resident_memory() -> None:
    assert parse_stat(stat_line(7, 3, start=555, rss=4)) == Proc(3, 4 * PAGE, 555)
    assert parse_stat(stat_line(7, 3, state="Z")) is None  # zombies are not counted
    assert parse_stat("7 (x) S") is None


def test_marker_of_finds_only_the_whole_variable() -> None:
    env = f"A=1\0{MARKER}x=no\0{MARKER}=i-1\0".encode()
    assert marker_of(env) == "i-1"
    assert marker_of(b"A=1\0") is None


TABLE = Table(
    procs={
        1: Proc(0, 0, 1),
        10: Proc(1, 100, 1),  # instance a's root
        11: Proc(10, 100, 1),  # its child
        12: Proc(11, 100, 1),  # grandchild
        20: Proc(1, 50, 1),  # escaped from a by double fork, still marked
        21: Proc(20, 50, 1),  # a child of the escaped one
        30: Proc(1, 7, 1),  # instance b's root
        40: Proc(1, 1, 1),  # not ours
        99: Proc(1, 1, 1),  # the agent itself, marked by mistake
    },
    marks={20: "a", 99: "b", 77: "a"},  # 77 is gone
)


def test_groups_hand_each_instance_its_tree_and_marked_processes() -> None:
    groups = TABLE.groups({"a": 10, "b": 30, "c": None, "d": 55}, exclude=(99,))
    assert groups == {"a": {10, 11, 12, 20, 21}, "b": {30}, "c": set(), "d": set()}
    assert TABLE.rss(groups["a"]) == 400


def test_over_limit_names_the_limit() -> None:
    limits = Limits(pids=3, memory_bytes=1000)
    assert over_limit(3, 1000, limits) is None
    assert over_limit(4, 0, limits) == "pids"
    assert over_limit(1, 1001, limits) == "memory"


class CountingFS(ProcFS):
    """The real reader over a fake /proc, counting what it reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.environs: list[int] = []

    def environ(self, pid: int) -> bytes | None:
        self.environs.append(pid)
        return super().environ(pid)


def fake_proc(root: Path, pid: int, ppid: int, start: int, env: bytes) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    (root / str(pid) / "stat").write_text(stat_line(pid, ppid, start=start))
    (root / str(pid) / "environ").write_bytes(env)


def test_a_process_environment_is_read_once_per_process_life(tmp_path: Path) -> None:
    marked = f"{MARKER}=a\0".encode()
    fake_proc(tmp_path, 5, 1, 100, marked)
    fake_proc(tmp_path, 6, 5, 100, b"")
    (tmp_path / "self").mkdir()
    fs = CountingFS(tmp_path)
    scanner = Scanner(fs)
    assert scanner.scan().marks == {5: "a"}
    assert scanner.scan().marks == {5: "a"}
    assert sorted(fs.environs) == [5, 6]  # the second pass read no environment
    fake_proc(tmp_path, 6, 1, 200, marked)  # pid 6 reused by another process
    assert scanner.scan().marks == {5: "a", 6: "a"}
    assert sorted(fs.environs) == [5, 6, 6]
    assert scanner.pids_of(None, "a") == {5, 6}
