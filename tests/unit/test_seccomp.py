"""The jail's seccomp program, decoded and run by a small classic-BPF interpreter over
(arch, nr, args) tuples: what passes, what gets EPERM or ENOSYS, what kills; the program
is well formed; the syscall numbers match the kernel headers when they are installed."""

from __future__ import annotations

import errno
import os
import re
import struct
from pathlib import Path

import pytest

from node import seccomp
from node.jail import FULL, PLAIN, ROOTLESS, bwrap_args, jail_filter
from node.seccomp import (
    ARCHES,
    DENIED,
    INSN,
    JEQ,
    JGE,
    JSET,
    LD_W_ABS,
    RET,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    for_machine,
)

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]
AUDIT_ARCH_I386 = 0x40000003
EPERM, ENOSYS = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
# clone flags glibc uses for fork() and pthread_create(), and Python's vfork path
FORK = 0x01200011  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
THREAD = 0x003D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|...
VFORK = 0x00004111  # CLONE_VM | CLONE_VFORK | SIGCHLD
CLONE_NEWUSER = 0x10000000  # one of the CLONE_NEW* flags the filter refuses
# plain calls ordinary programs make: read, write, openat, mmap, futex, execve, exit_group
COMMON = {"x86_64": (0, 1, 257, 9, 202, 59, 231), "aarch64": (63, 64, 56, 222, 98, 221, 94)}


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    assert len(program) % INSN.size == 0
    return [INSN.unpack_from(program, off) for off in range(0, len(program), INSN.size)]


def run(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Run the program the way the kernel would over one struct seccomp_data."""
    full = (*args, *([0] * (6 - len(args))))
    data = struct.pack("<iIQ6Q", nr, arch, 0x401000, *full)
    insns, pc, acc = decode(program), 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (JEQ, JGE, JSET):
            taken = {JEQ: acc == k, JGE: acc >= k, JSET: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == RET:
            return int(k)
        else:
            raise AssertionError(f"unknown opcode {code:#x} at {pc}")


def verdict(machine: str, name_or_nr: str | int, *args: int) -> int:
    arch = ARCHES[machine]
    nr = arch.numbers[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    program = for_machine(machine).program
    assert program is not None
    return run(program, arch.audit, nr, args)


@pytest.mark.parametrize("machine", sorted(ARCHES))
def test_ordinary_calls_pass(machine: str) -> None:
    for nr in COMMON[machine]:
        assert verdict(machine, nr, 3, 0, 0) == RET_ALLOW


@pytest.mark.parametrize("machine", sorted(ARCHES))
def test_every_denied_call_gets_eperm(machine: str) -> None:
    present = [n for n in DENIED if n in ARCHES[machine].numbers]
    assert {
        "keyctl",
        "bpf",
        "perf_event_open",
        "mount",
        "ptrace",
        "setns",
        "userfaultfd",
        "open_by_handle_at",
    } <= set(present)
    for name in present:
        assert verdict(machine, name) == EPERM, name


@pytest.mark.parametrize("machine", sorted(ARCHES))
@pytest.mark.parametrize(
    ("call", "flags", "expected"),
    [
        ("clone", FORK, RET_ALLOW),
        ("clone", THREAD, RET_ALLOW),
        ("clone", VFORK, RET_ALLOW),
        ("clone", FORK | CLONE_NEWUSER, EPERM),
        ("clone", FORK | 0x40000000, EPERM),  # CLONE_NEWNET
        ("clone", FORK | 0x00020000, EPERM),  # CLONE_NEWNS
        ("unshare", CLONE_NEWUSER, EPERM),
        ("unshare", CLONE_NEWUSER | 0x40000000, EPERM),  # unshare -Urn
        ("unshare", 0x20000000, EPERM),  # CLONE_NEWPID
        ("unshare", 0x80, EPERM),  # CLONE_NEWTIME
        ("unshare", 0x00000200 | 0x00000400, RET_ALLOW),  # CLONE_FS | CLONE_FILES
        ("unshare", 0, RET_ALLOW),
        ("clone3", 0, ENOSYS),  # libc falls back to clone
        ("personality", 0xFFFFFFFF, RET_ALLOW),  # query
        ("personality", 0, RET_ALLOW),
        ("personality", 0x8, RET_ALLOW),
        ("personality", 0x0040000, EPERM),  # ADDR_NO_RANDOMIZE
        ("personality", 0x0400000, EPERM),  # READ_IMPLIES_EXEC
    ],
)
def test_conditional_calls(machine: str, call: str, flags: int, expected: int) -> None:
    assert verdict(machine, call, flags) == expected


def test_namespace_flags_in_the_high_half_are_not_mistaken_for_ours() -> None:
    # the kernel only reads the low 32 bits of clone's and unshare's flags
    assert verdict("x86_64", "clone", FORK | (CLONE_NEWUSER << 32)) == RET_ALLOW


def test_another_abi_is_killed_and_x32_denied() -> None:
    program = for_machine("x86_64").program
    assert program is not None
    assert run(program, AUDIT_ARCH_I386, 20) == RET_KILL_PROCESS  # i386 getpid
    assert run(program, ARM.audit, 63) == RET_KILL_PROCESS
    assert run(program, X86.audit, 0x40000000 | 39) == EPERM  # x32 getpid
    assert run(program, X86.audit, 0x40000000 | 272, (0,)) == EPERM  # x32 unshare


@pytest.mark.parametrize("machine", sorted(ARCHES))
def test_the_program_is_well_formed(machine: str) -> None:
    program = for_machine(machine).program
    assert program is not None
    insns = decode(program)
    assert len(insns) <= seccomp.MAX_INSNS
    assert insns[-1] == (RET, 0, 0, RET_ALLOW)
    for pc, (code, jt, jf, k) in enumerate(insns):
        assert code in (LD_W_ABS, JEQ, JGE, JSET, RET)
        if code in (JEQ, JGE, JSET):  # forward jumps that stay inside the program
            assert pc + 1 + max(jt, jf) < len(insns)
        if code == LD_W_ABS:
            assert k in (seccomp.OFF_NR, seccomp.OFF_ARCH, seccomp.OFF_ARG0_LOW)


def test_unknown_machines_get_no_filter_and_say_why() -> None:
    found = for_machine("riscv64")
    assert found.program is None
    assert found.summary.startswith("none:")
    assert "riscv64" in found.summary
    assert jail_filter(FULL, "riscv64").program is None
    assert jail_filter(PLAIN, "x86_64").summary.startswith("none: the plain tier")
    for tier in (FULL, ROOTLESS):
        assert jail_filter(tier, "x86_64").program == for_machine("x86_64").program


def test_summary_counts_the_calls_covered() -> None:
    assert for_machine("x86_64").summary == (
        f"default-deny-list ({seccomp.covered(X86)} syscalls, x86_64)"
    )
    assert seccomp.covered(X86) == sum(n in X86.numbers for n in (*DENIED, *seccomp.CHECKED))
    assert seccomp.covered(X86) > 60


def test_bwrap_gets_the_program_fd() -> None:
    from node.jail import JailSpec

    spec = JailSpec("b1", ("true",), {}, Path("/srv/app"))
    args = bwrap_args(spec, [], 7, 8, userns=False, seccomp_fd=9)
    assert args[args.index("--seccomp") + 1] == "9"
    assert "--seccomp" not in bwrap_args(spec, [], 7, 8, userns=False)


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize(
    ("machine", "header"),
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        ("aarch64", "/usr/include/asm-generic/unistd.h"),
    ],
)
def test_numbers_match_the_kernel_headers(machine: str, header: str) -> None:
    if not Path(header).exists():
        if os.environ.get("CI"):  # .ci/run installs linux-libc-dev: never skip there
            pytest.fail(f"{header} is missing in CI")
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    known = _header_numbers(Path(header))
    ours = ARCHES[machine].numbers
    for name, nr in ours.items():
        if name in known:  # newer calls than the installed headers are checked by hand
            assert known[name] == nr, name
    assert sum(name in known for name in ours) > 50
    # a denied name the headers know but our table lacks would silently go unfiltered
    missing = [n for n in (*DENIED, *seccomp.CHECKED) if n in known and n not in ours]
    assert not missing
