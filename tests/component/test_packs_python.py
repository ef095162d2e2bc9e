"""The python pack run for real: .python-version / runtime.txt, pyproject.toml apps, and
the Procfile hint for obvious WSGI/ASGI modules (no guessing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import uv

from packs import PACKS_DIR

PACK = PACKS_DIR / "python"
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "FOUNDRY_UV": uv.find_uv_bin(),
    "UV_LINK_MODE": "copy",
}
SYSTEM = subprocess.run(
    ["python3", "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
    env=ENV,
    capture_output=True,
    text=True,
).stdout.strip()


def build_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    build = tmp_path / "build"
    for name, text in files.items():
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_text(text)
    return build


def compile_(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    build = build_dir(tmp_path, files)
    for d in ("cache", "env"):
        (tmp_path / d).mkdir(exist_ok=True)
    return subprocess.run(
        [str(PACK / "bin" / "compile"), str(build), str(tmp_path / "cache"), str(tmp_path / "env")],
        env={**ENV, "HOME": str(build)},
        capture_output=True,
        text=True,
        timeout=120,
    )


PROC = {"Procfile": "web: python3 -m http.server $PORT"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".python-version", SYSTEM.rsplit(".", 1)[0] + "\n"),
        (".python-version", SYSTEM),
        ("runtime.txt", f"python-{SYSTEM}\n"),
    ],
)
def test_a_version_file_the_node_has_is_used(tmp_path: Path, name: str, text: str) -> None:
    done = compile_(tmp_path, {name: text, "requirements.txt": "", **PROC})
    assert done.returncode == 0, done.stderr
    assert f"using {SYSTEM}" in done.stderr
    venv = tmp_path / "build" / ".venv" / "bin" / "python"
    assert (
        subprocess.run(
            [str(venv), "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        == SYSTEM
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".python-version", "3.4\n"),
        ("runtime.txt", "python-2.7.18"),
    ],
)
def test_a_version_the_node_lacks_fails_listing_what_exists(
    tmp_path: Path, name: str, text: str
) -> None:
    done = compile_(tmp_path, {name: text, **PROC})
    assert done.returncode == 1
    assert f"{name} asks for Python {text.strip().removeprefix('python-')}" in done.stderr
    assert f"this node has only Python {SYSTEM}" in done.stderr


def test_a_garbled_version_file_is_refused(tmp_path: Path) -> None:
    done = compile_(tmp_path, {".python-version": "latest please", **PROC})
    assert done.returncode == 1
    assert ".python-version must name a Python version" in done.stderr


def test_pyproject_without_a_build_system_installs_its_dependencies(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": '[project]\nname = "x"\nversion = "1"\n'
        'dependencies = ["packaging>=20", "six"]\n',
        **PROC,
    }
    deps = subprocess.run(
        [
            sys.executable,
            str(PACK / "lib" / "pyapp.py"),
            "dependencies",
            str(build_dir(tmp_path, files)),
        ],
        capture_output=True,
        text=True,
    )
    assert deps.stdout.split() == ["packaging>=20", "six"]
    (tmp_path / "build" / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    done = compile_(tmp_path, {})
    assert done.returncode == 0, done.stderr
    assert "Installing the dependencies listed in pyproject.toml" in done.stdout


@pytest.mark.parametrize(
    ("files", "line"),
    [
        (
            {
                "app.py": "from flask import Flask\napp = Flask(__name__)\n",
                "requirements.txt": "flask",
            },
            "web: gunicorn app:app --bind 0.0.0.0:$PORT`, and add gunicorn",
        ),
        (
            {
                "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
                "requirements.txt": "fastapi\nuvicorn\n",
            },
            "web: uvicorn main:app --host 0.0.0.0 --port $PORT`",
        ),
        (
            {
                "mysite/wsgi.py": "application = get_wsgi_application()\n",
                "requirements.txt": "gunicorn",
            },
            "web: gunicorn mysite.wsgi:application --bind 0.0.0.0:$PORT`",
        ),
        (
            {
                "wsgi.py": "def application(environ, start_response):\n    pass\n",
                "requirements.txt": "",
            },
            "web: gunicorn wsgi:application",
        ),
    ],
)
def test_no_procfile_and_an_obvious_web_module_says_which_line_to_add(
    tmp_path: Path, files: dict[str, str], line: str
) -> None:
    done = compile_(tmp_path, files)
    assert done.returncode == 1
    assert "No Procfile" in done.stderr
    assert line in done.stderr
    assert not (tmp_path / "build" / ".venv").exists()  # it stopped before installing


@pytest.mark.parametrize(
    "files",
    [
        {"app.py": "app = 1\n", "requirements.txt": "", "Procfile": "web: python3 app.py"},
        {"worker.py": "print('hi')\n", "requirements.txt": ""},
    ],
)
def test_no_hint_with_a_procfile_or_without_a_web_module(
    tmp_path: Path, files: dict[str, str]
) -> None:
    done = compile_(tmp_path, files)
    assert done.returncode == 0, done.stderr
