"""The jail's pure decisions: tier choice over probe results, bwrap's arguments, the
launcher's command line, exit decoding and cgroup arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cgroups import V1Cgroup, limits_for, own_paths, v2_weight
from node.jail import (
    APP,
    ENTER_CGROUPS,
    FULL,
    PLAIN,
    ROOTLESS,
    Bind,
    Jailer,
    JailError,
    JailSpec,
    Probe,
    TierChoice,
    bwrap_args,
    choose_tier,
    decode_exit,
    drop_to,
    identity_files,
    scope_of,
)

GOOD = Probe(linux=True, root=True, bwrap=True, setpriv=True, userns=True, cgroup_version=1)


@pytest.mark.parametrize(
    ("changes", "tier", "why"),
    [
        ({}, FULL, "cgroup v1"),
        ({"cgroup_version": 2}, FULL, "cgroup v2"),
        ({"cgroup_version": None}, ROOTLESS, "no usable cgroup"),
        ({"root": False, "cgroup_version": None}, ROOTLESS, "not root"),
        ({"root": False, "userns": False, "cgroup_version": None}, PLAIN, "user namespaces"),
        ({"bwrap": False}, PLAIN, "bubblewrap"),
        ({"setpriv": False}, PLAIN, "setpriv"),
        ({"linux": False, "root": False, "bwrap": False}, PLAIN, "not Linux"),
    ],
)
def test_tier_is_the_strongest_the_probe_allows(
    changes: dict[str, object], tier: str, why: str
) -> None:
    probe = Probe(**{**GOOD.__dict__, **changes})
    choice = choose_tier(probe)
    assert choice.tier == tier
    assert why in choice.reason


def test_a_weaker_tier_can_be_forced_but_never_a_stronger_one() -> None:
    assert choose_tier(GOOD, PLAIN).tier == PLAIN
    assert choose_tier(GOOD, ROOTLESS).tier == ROOTLESS
    weak = Probe(
        linux=True, root=False, bwrap=False, setpriv=True, userns=False, cgroup_version=None
    )
    forced = choose_tier(weak, FULL)
    assert forced.tier == PLAIN
    assert "unavailable" in forced.reason
    with pytest.raises(JailError, match="unknown jail tier"):
        choose_tier(GOOD, "docker")


SPEC = JailSpec(
    "i-1",
    ("python3", "app.py"),
    {"PORT": "5000"},
    Path("/srv/node/i-1/app"),
    64,
    (
        Bind(Path("/srv/cache/a"), "/cache", writable=True),
        Bind(Path("/root/tools/uv"), "/opt/foundry/bin/uv"),
    ),
)


def pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_bwrap_args_build_the_jail_view() -> None:
    args = bwrap_args(SPEC, ["--ro-bind", "/usr", "/usr"], 7, 8, userns=False)
    for flag in (
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
    ):
        assert flag in args
    assert "--unshare-user" not in args
    assert "--unshare-net" not in args  # host network
    assert ("/usr", "/usr") in pairs(args, "--ro-bind")
    assert pairs(args, "--bind") == [("/srv/node/i-1/app", APP), ("/srv/cache/a", "/cache")]
    assert ("/root/tools/uv", "/opt/foundry/bin/uv") in pairs(args, "--ro-bind")
    assert pairs(args, "--ro-bind-data") == [("7", "/etc/passwd"), ("8", "/etc/group")]
    assert args[-4:] == ["--chdir", APP, "--remount-ro", "/"]
    for tmp in ("/tmp", "/dev/shm"):
        i = args.index(tmp)
        assert args[i - 5 : i] == ["--perms", "1777", "--size", str(64 << 20), "--tmpfs"]
    # Parents of bind targets are made world-searchable, outermost first.
    dirs = [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    assert dirs == ["/opt", "/opt/foundry", "/opt/foundry/bin"]
    assert "--disable-userns" in bwrap_args(SPEC, [], 7, 8, userns=True)


def test_identity_and_privilege_drop() -> None:
    passwd, group = identity_files(20007)
    assert b"app:x:20007:20007:app:/app:" in passwd
    assert b"app:x:20007:" in group
    assert drop_to(20007)[:3] == ["setpriv", "--reuid=20007", "--regid=20007"]
    assert "--no-new-privs" in drop_to(1)
    assert "--clear-groups" in drop_to(1)


def test_the_launcher_joins_the_cgroup_before_bwrap() -> None:
    jailer = Jailer(TierChoice(FULL, "test"), bwrap="/usr/bin/bwrap")
    group = V1Cgroup([Path(f"/cg/{c}/x") for c in ("memory", "pids", "cpu", "freezer")])
    argv = jailer.argv(SPEC, 20001, 9, group)
    assert argv[:3] == ["/bin/sh", "-c", ENTER_CGROUPS]
    sep = argv.index("--")
    assert argv[4:sep] == [f"/cg/{c}/x/cgroup.procs" for c in ("memory", "pids", "cpu", "freezer")]
    assert argv[sep + 1 : sep + 4] == ["/usr/bin/bwrap", "--args", "9"]
    assert argv[-2:] == ["python3", "app.py"]


def test_plain_tier_runs_the_command_as_is() -> None:
    jailer = Jailer(TierChoice(PLAIN, "test"), prlimit="/usr/bin/prlimit")
    assert jailer.argv(SPEC, 0, -1, None) == ["/usr/bin/prlimit", "--core=0", "python3", "app.py"]
    assert jailer.inside("/srv/node/i-1/app/x", SPEC.app_dir) == "/srv/node/i-1/app/x"


def test_paths_inside_the_jail() -> None:
    jailer = Jailer(TierChoice(FULL, "test"))
    assert jailer.inside("/srv/node/i-1/app", SPEC.app_dir) == APP
    assert jailer.inside("/srv/node/i-1/app/.venv", SPEC.app_dir) == "/app/.venv"
    assert jailer.inside("/srv/cache/a", SPEC.app_dir, SPEC.binds) == "/cache"
    assert jailer.inside("/srv/cache/ab", SPEC.app_dir, SPEC.binds) == "/srv/cache/ab"
    assert jailer.inside("/root/tools/uv", SPEC.app_dir, SPEC.binds) == "/opt/foundry/bin/uv"


def test_exit_codes_and_limits() -> None:
    assert decode_exit(137, bwrapped=True) == -9
    assert decode_exit(137, bwrapped=False) == 137
    assert decode_exit(3, bwrapped=True) == 3
    assert limits_for(64).memory_bytes == 64 << 20
    assert limits_for(64).cpu_shares == 64
    assert limits_for(1).cpu_shares == 2
    assert v2_weight(2) == 1
    assert v2_weight(262144) == 10000
    assert 3 <= v2_weight(1024) <= 50


def test_own_cgroup_paths_and_scopes() -> None:
    text = "4:memory:/a/b\n3:cpu,cpuacct:/\n0::/user.slice\n"
    assert own_paths(text) == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
    (s1, u1), (s2, u2) = scope_of("/home/a/.foundry/node"), scope_of("/tmp/x/node")
    assert s1 != s2
    assert s1.startswith("node-")
    assert u1 >= 20000
    assert u2 >= 20000
