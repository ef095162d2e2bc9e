"""`git push` deploys: build lines come back as `remote:`, a failed build refuses the push
and the running release keeps serving, and tokens are checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Platform

pytestmark = pytest.mark.slow
GIT_ID = ["-c", "user.email=dev@example.test", "-c", "user.name=dev"]


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", "-C", str(repo), *GIT_ID, *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "HOME": str(repo.parent), "GIT_TERMINAL_PROMPT": "0"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES / "hello-python", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "first")
    return work


def test_git_push_deploys_and_a_broken_push_is_refused(platform: Platform, repo: Path) -> None:
    platform.cli("git-remote", "pushed", "--dir", str(repo))
    pushed = git(repo, "push", "foundry", "main")
    assert "remote: -----> Installing dependencies" in pushed.stderr
    assert "remote: -----> pushed v1 is running" in pushed.stderr
    assert platform.get("pushed").text == "Hello from pushed, instance 0\n"
    head = git(repo, "rev-parse", "HEAD").stdout.strip()

    with open(repo / "requirements.txt", "a") as f:
        f.write("foundry-no-such-package-77e1==1.0\n")
    git(repo, "commit", "-qam", "broken")
    refused = git(repo, "push", "foundry", "main", check=False)
    assert refused.returncode != 0
    assert "pre-receive hook declined" in refused.stderr
    assert "remote: !      build failed" in refused.stderr
    remote_head = git(repo, "ls-remote", "foundry", "refs/heads/main").stdout.split()[0]
    assert remote_head == head  # the ref did not move
    assert platform.get("pushed").status_code == 200  # the old release still serves


def test_git_push_needs_a_deploy_token(platform: Platform, repo: Path) -> None:
    url = f"http://127.0.0.1:{platform.api_port}/git/readonly.git"
    git(repo, "remote", "add", "foundry", url)
    anonymous = git(repo, "push", "foundry", "main", check=False)
    assert anonymous.returncode != 0
    read_token = platform.cli("tokens", "create", "--kind", "read").stdout.strip()
    git(repo, "config", f"http.{url}.extraHeader", f"Authorization: Bearer {read_token}")
    refused = git(repo, "push", "foundry", "main", check=False)
    assert refused.returncode != 0
    assert "403" in refused.stderr
    assert platform.cli("app", "readonly", check=False).returncode == 1  # nothing created
    deploy = platform.cli("tokens", "create", "--kind", "deploy", "--apps", "other").stdout
    git(repo, "config", f"http.{url}.extraHeader", f"Authorization: Bearer {deploy.strip()}")
    assert git(repo, "push", "foundry", "main", check=False).returncode != 0
