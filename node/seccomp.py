"""The jail's default seccomp filter: a classic-BPF program built here, by hand, that
bubblewrap installs (`--seccomp FD`) in every jailed process of the full and rootless
tiers (builds, instances and tasks alike).

What it denies follows Docker's default profile: the calls that reach kernel surface an
app never needs and that has a history of privilege escalations — keyrings, eBPF, perf,
io_uring, ptrace and cross-process memory access, mounts (old and new API), namespaces,
module loading, kexec, reboot, swap, clocks, raw I/O ports, quotas, handle-based opens,
userfaultfd, NUMA placement, the kernel log.

Rules the program keeps:
* It is a deny list: a call it does not name is allowed, so a new kernel or a new libc
  never breaks apps. The names are the same on every architecture (where they exist).
* A denied call fails with EPERM (never a kill), so programs that probe a feature
  (liburing, perf, a sandbox helper) degrade gracefully.
* No new namespaces, above all no user namespace (`unshare -Ur` would give uid 0 in a
  namespace of its own, and with it the kernel surface behind CAP_SYS_ADMIN): `clone`
  and `unshare` with any CLONE_NEW* flag get EPERM. `clone3` takes its flags in memory
  that BPF cannot read, so it gets ENOSYS: libc then falls back to `clone`, whose flags
  are in a register and are checked.
* ptrace (and process_vm_*, kcmp, pidfd_getfd) are denied although Docker allows them on
  kernels >= 4.8: the platform offers no in-jail debugging, and every process of a jail
  shares one uid, so ptrace would open each one's memory to the others.
* `personality` only with the values ordinary programs use (query, PER_LINUX, PER_LINUX32,
  UNAME26): no switching off address-space randomisation.
* The architecture is checked first. A call through another ABI (i386's `int 0x80` on an
  x86_64 kernel) kills the process, since the numbers below would mean other calls
  there; x32 calls (nr with bit 30 set) get EPERM.
* Only machines listed in `ARCHES` get a program. Anywhere else `for_machine` says so
  (`none: ...`) and the node warns: a filter built for another ABI would be wrong.

Everything here is pure: `program()` returns the bytes bubblewrap reads.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from dataclasses import dataclass

# Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word at offset k
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K: jump if A & k
RET = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
MAX_INSNS = 4096  # BPF_MAXINSNS

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]. Both
# supported machines are little-endian, so args[0]'s low half is at 16.
OFF_NR, OFF_ARCH, OFF_ARG0_LOW = 0, 4, 16

INSN = struct.Struct("=HBBI")  # struct sock_filter, in the kernel's (native) byte order

# Every CLONE_NEW* flag: TIME, NS, CGROUP, UTS, IPC, USER, PID, NET. All live in the low
# 32 bits, the only bits clone and unshare look at. TIME (0x80) shares clone's exit-signal
# byte, where no valid signal (at most 64) sets it.
CLONE_NEW_FLAGS = (
    0x80 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
# personality(2) arguments Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
# PER_LINUX32|UNAME26, and 0xffffffff (query only).
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

DENIED = (
    # keyrings, eBPF, perf, io_uring
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # tracing other processes and reading or writing their memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # mounts, old and new API, and other root-changing calls
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # namespaces (clone and unshare are checked by flag below)
    "setns",
    # the kernel itself: modules, kexec, reboot, swap, accounting, quotas, the log
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "lookup_dcookie",
    "nfsservctl",
    "_sysctl",
    "sysfs",
    "uselib",
    "ustat",
    "vhangup",
    "fanotify_init",
    # clocks
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    # raw hardware access
    "iopl",
    "ioperm",
    # handle-based opens (escape a bind mount), userfaultfd (stalls the kernel for exploits)
    "name_to_handle_at",
    "open_by_handle_at",
    "userfaultfd",
    # NUMA placement: the cgroup decides where memory goes, not the app
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "migrate_pages",
    "move_pages",
)
CHECKED = ("clone", "unshare", "clone3", "personality")  # allowed with conditions

# Numbers for every name above, from the kernel's uapi headers (tests compare them with
# the installed headers). A name missing from a table does not exist on that machine.
X86_64_NUMBERS: Mapping[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "ustat": 136,
    "personality": 135,
    "sysfs": 139,
    "vhangup": 153,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "mbind": 237,
    "set_mempolicy": 238,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "migrate_pages": 256,
    "unshare": 272,
    "move_pages": 279,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "clone": 56,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
}
AARCH64_NUMBERS: Mapping[str, int] = {  # asm-generic/unistd.h
    "lookup_dcookie": 18,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "nfsservctl": 42,
    "chroot": 51,
    "vhangup": 58,
    "quotactl": 60,
    "acct": 89,
    "personality": 92,
    "unshare": 97,
    "kexec_load": 104,
    "init_module": 105,
    "delete_module": 106,
    "clock_settime": 112,
    "syslog": 116,
    "ptrace": 117,
    "reboot": 142,
    "settimeofday": 170,
    "adjtimex": 171,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "clone": 220,
    "swapon": 224,
    "swapoff": 225,
    "mbind": 235,
    "set_mempolicy": 237,
    "migrate_pages": 238,
    "move_pages": 239,
    "perf_event_open": 241,
    "fanotify_init": 262,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "clock_adjtime": 266,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "bpf": 280,
    "userfaultfd": 282,
    "kexec_file_load": 294,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
}


@dataclass(frozen=True)
class Arch:
    """One machine's system call ABI as the filter sees it."""

    machine: str  # os.uname().machine
    audit: int  # AUDIT_ARCH_* in seccomp_data.arch
    numbers: Mapping[str, int]
    x32_bit: int | None = None  # calls with this bit set use the x32 ABI


ARCHES = {
    a.machine: a
    for a in (
        Arch("x86_64", 0xC000003E, X86_64_NUMBERS, x32_bit=0x40000000),
        Arch("aarch64", 0xC00000B7, AARCH64_NUMBERS),
    )
}

Insn = tuple[int, int, int, int]  # (code, jt, jf, k)


@dataclass(frozen=True)
class Filter:
    """The program jails get (None: no filter) and how `foundry nodes` shows it."""

    program: bytes | None
    summary: str


def _errno(code: int) -> int:
    return RET_ERRNO | code


def _deny(nr: int) -> list[Insn]:
    return [(JEQ, 0, 1, nr), (RET, 0, 0, _errno(errno.EPERM))]


def _deny_flags(nr: int, mask: int) -> list[Insn]:
    """EPERM when args[0] has any bit of `mask`; otherwise allow."""
    return [
        (JEQ, 0, 4, nr),
        (LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        (JSET, 0, 1, mask),
        (RET, 0, 0, _errno(errno.EPERM)),
        (RET, 0, 0, RET_ALLOW),
    ]


def _allow_values(nr: int, values: tuple[int, ...]) -> list[Insn]:
    """Allow when args[0] is one of `values`; otherwise EPERM."""
    n = len(values)
    checks: list[Insn] = [(JEQ, n - i, 0, v) for i, v in enumerate(values)]
    return [
        (JEQ, 0, n + 3, nr),
        (LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        *checks,
        (RET, 0, 0, _errno(errno.EPERM)),
        (RET, 0, 0, RET_ALLOW),
    ]


def instructions(arch: Arch) -> list[Insn]:
    """The filter for `arch` as (code, jt, jf, k) tuples."""
    nums = arch.numbers
    code: list[Insn] = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ, 1, 0, arch.audit),
        (RET, 0, 0, RET_KILL_PROCESS),
        (LD_W_ABS, 0, 0, OFF_NR),
    ]
    if arch.x32_bit is not None:
        code += [(JGE, 0, 1, arch.x32_bit), (RET, 0, 0, _errno(errno.EPERM))]
    for nr in sorted(nums[name] for name in DENIED if name in nums):
        code += _deny(nr)
    code += [(JEQ, 0, 1, nums["clone3"]), (RET, 0, 0, _errno(errno.ENOSYS))]
    code += _deny_flags(nums["clone"], CLONE_NEW_FLAGS)
    code += _deny_flags(nums["unshare"], CLONE_NEW_FLAGS)
    code += _allow_values(nums["personality"], PERSONALITY_ALLOWED)
    return [*code, (RET, 0, 0, RET_ALLOW)]


def encode(insns: list[Insn]) -> bytes:
    """A program as the array of struct sock_filter bubblewrap hands to the kernel."""
    if len(insns) > MAX_INSNS:
        raise ValueError(f"seccomp program of {len(insns)} instructions is too long")
    return b"".join(INSN.pack(*i) for i in insns)


def covered(arch: Arch) -> int:
    """How many of this machine's syscalls the filter denies or restricts."""
    return sum(name in arch.numbers for name in (*DENIED, *CHECKED))


def for_machine(machine: str) -> Filter:
    """The default filter for a machine (`os.uname().machine`), or why there is none."""
    arch = ARCHES.get(machine)
    if arch is None:
        return Filter(None, f"none: no seccomp filter for {machine} (only {', '.join(ARCHES)})")
    return Filter(
        encode(instructions(arch)), f"default-deny-list ({covered(arch)} syscalls, {machine})"
    )
