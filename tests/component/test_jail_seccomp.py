"""The seccomp filter in real jails (full and rootless tiers), without the platform: no
new user namespace by any route, the dangerous calls fail with EPERM, and ordinary
programs (python, sh, threads, subprocesses, node) still work.

Each denied call is probed with arguments the kernel would answer with something other
than EPERM when no filter is in place (success, EFAULT, ENOENT, EBADF), so a missing
filter fails these tests instead of passing on a permission check of the kernel's."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from node.jail import FULL, PLAIN, ROOTLESS, Jailer, make_jailer
from node.seccomp import ARCHES
from tests.component.test_jail_run import BEST, needs_jail, output, spec, unavailable

MACHINE = os.uname().machine
pytestmark = [
    needs_jail,
    pytest.mark.skipif(MACHINE not in ARCHES, reason=f"no seccomp filter for {MACHINE}"),
]

# Run by the jail's python3; NR is this machine's syscall numbers (from node.seccomp).
PROBE = """
import ctypes, json, os, sys
NR = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def call(name, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(NR[name], *(ctypes.c_long(a) for a in args))
    return 0 if ret >= 0 else ctypes.get_errno()

def in_child(name, *args):   # for calls that change the caller (namespaces, ptrace, ...)
    pid = os.fork()
    if pid == 0:
        os._exit(call(name, *args))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

attr = ctypes.create_string_buffer(128)      # struct perf_event_attr, software task clock
ctypes.c_uint32.from_buffer(attr, 0).value = 1
ctypes.c_uint32.from_buffer(attr, 4).value = 128
ctypes.c_uint64.from_buffer(attr, 8).value = 1
ctypes.c_uint64.from_buffer(attr, 40).value = 1 << 5 | 1 << 6   # exclude kernel, hv
print(json.dumps({
    "unshare_user": in_child("unshare", 0x10000000),
    "unshare_user_net": in_child("unshare", 0x10000000 | 0x40000000),
    "clone_user": in_child("clone", 0x10000000 | 17, 0, 0, 0, 0),
    "keyctl": call("keyctl", 0, -2, 1),         # KEYCTL_GET_KEYRING_ID of the process ring
    "perf_event_open": call("perf_event_open", ctypes.addressof(attr), 0, -1, -1, 0),
    "mount": call("mount", 0, ctypes.addressof(ctypes.create_string_buffer(b"/no/such")), 0,
                  0, 0),
    "userfaultfd": call("userfaultfd", 1),     # UFFD_USER_MODE_ONLY: allowed unprivileged
    "io_uring_setup": call("io_uring_setup", 1, 0),
    "setns": call("setns", 999, 0),
    "ptrace": in_child("ptrace", 0, 0, 0, 0),  # PTRACE_TRACEME
    "personality_no_aslr": in_child("personality", 0x0040000),
    "personality_query": 0 if libc.personality(0xFFFFFFFF) >= 0 else ctypes.get_errno(),
}))
"""

ORDINARY = """
import concurrent.futures, json, multiprocessing, subprocess, threading
def square(x):
    return x * x
seen = []
threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    pooled = sum(pool.map(square, range(10)))
with multiprocessing.get_context("fork").Pool(2) as procs:
    forked = sum(procs.map(square, range(10)))
piped = subprocess.run(["sh", "-c", "echo hi | tr a-z A-Z"], capture_output=True, text=True)
print(json.dumps({"threads": sorted(seen), "pooled": pooled, "forked": forked,
                  "piped": piped.stdout.strip()}))
"""
NODE = (
    "const {Worker} = require('worker_threads');"
    "const {execFileSync} = require('child_process');"
    "const w = new Worker('require(\"worker_threads\").parentPort.postMessage(6*7)',"
    " {eval: true});"
    "w.on('message', m => { console.log(m, execFileSync('echo', ['ok']).toString().trim());"
    " w.terminate(); });"
)


@pytest.fixture(scope="module")
def jailers() -> dict[str, Jailer]:
    return {t: make_jailer(t, f"test-seccomp-{t}-{os.getpid()}") for t in (FULL, ROOTLESS)}


def tier_or_skip(tier: str) -> None:
    if tier == FULL and BEST != FULL:
        unavailable(tier)


@pytest.mark.parametrize("tier", [FULL, ROOTLESS])
async def test_denied_calls_get_eperm(
    tmp_path: Path, jailers: dict[str, Jailer], tier: str
) -> None:
    tier_or_skip(tier)
    assert jailers[tier].seccomp.program is not None
    numbers = json.dumps(dict(ARCHES[MACHINE].numbers))
    code, out = await output(
        await jailers[tier].spawn(spec(tmp_path, "python3", "-c", PROBE, numbers))
    )
    assert code == 0, out
    seen = json.loads(out)
    assert seen.pop("personality_query") == 0
    assert seen == {name: errno.EPERM for name in seen}


@pytest.mark.parametrize("tier", [FULL, ROOTLESS])
@pytest.mark.parametrize("command", ["unshare -Urn true", "unshare -U true", "unshare -r id"])
async def test_no_new_namespace_from_the_shell(
    tmp_path: Path, jailers: dict[str, Jailer], tier: str, command: str
) -> None:
    tier_or_skip(tier)
    code, out = await output(
        await jailers[tier].spawn(spec(tmp_path, "sh", "-c", f"{command}; echo exit=$?"))
    )
    assert code == 0
    assert "Operation not permitted" in out, out
    assert "exit=1" in out, out


@pytest.mark.parametrize("tier", [FULL, ROOTLESS])
async def test_ordinary_programs_still_work(
    tmp_path: Path, jailers: dict[str, Jailer], tier: str
) -> None:
    tier_or_skip(tier)
    code, out = await output(await jailers[tier].spawn(spec(tmp_path, "python3", "-c", ORDINARY)))
    assert code == 0, out
    assert json.loads(out) == {
        "threads": list(range(8)),
        "pooled": 285,
        "forked": 285,
        "piped": "HI",
    }
    shell = "for i in 1 2 3; do (echo $i) & done; wait; ls /app >/dev/null && echo done"
    code, out = await output(await jailers[tier].spawn(spec(tmp_path, "sh", "-c", shell)))
    assert code == 0, out
    assert sorted(out.split()) == ["1", "2", "3", "done"], out


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
@pytest.mark.parametrize("tier", [FULL, ROOTLESS])
async def test_node_with_a_worker_thread_and_a_child_still_works(
    tmp_path: Path, jailers: dict[str, Jailer], tier: str
) -> None:
    tier_or_skip(tier)
    code, out = await output(await jailers[tier].spawn(spec(tmp_path, "node", "-e", NODE)))
    assert code == 0, out
    assert out.split() == ["42", "ok"], out


def test_only_jailing_tiers_have_a_filter(jailers: dict[str, Jailer]) -> None:
    plain = make_jailer(PLAIN, f"test-seccomp-plain-{os.getpid()}")
    assert plain.seccomp.program is None
    assert plain.seccomp.summary.startswith("none:")
    for jailer in jailers.values():
        assert jailer.seccomp.summary.startswith("default-deny-list (")
