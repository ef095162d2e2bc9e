"""Helpers for the python pack's bin/compile, run with the node's python3 (stdlib only).

    pyapp.py interpreter BUILD_DIR     print the interpreter to build with, honouring
                                       .python-version / runtime.txt; exit 1 listing
                                       what exists when nothing matches
    pyapp.py procfile-hint BUILD_DIR   exit 1 with the Procfile line to add when there is
                                       no Procfile but an obvious WSGI/ASGI module
    pyapp.py dependencies BUILD_DIR    print [project].dependencies of a pyproject.toml
                                       that has no [build-system] (an app, not a package)

A version file asks for a prefix: `3.11` takes any 3.11.x, `3.11.7` only 3.11.7.
Nothing here guesses a start command: a hint names the line and the build stops.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = re.compile(r"^(?:python-?)?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
CANDIDATE = re.compile(r"^python3(\.\d+)?$")


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def requested(build: Path) -> tuple[str, tuple[int, ...]] | None:
    """(file, version prefix) the app asks for, or None."""
    for name in (".python-version", "runtime.txt"):
        path = build / name
        if not path.is_file():
            continue
        lines = [
            ln.strip()
            for ln in path.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.strip().startswith("#")
        ]
        match = VERSION.match(lines[0]) if lines else None
        if not match:
            fail(
                f"{name} must name a Python version like 3.11 or python-3.11.7, "
                f"not {lines[0] if lines else 'nothing'!r}"
            )
            return None
        return name, tuple(int(g) for g in match.groups() if g is not None)
    return None


def interpreters() -> dict[tuple[int, int, int], str]:
    """Python 3 interpreters on PATH (and FOUNDRY_PYTHON), by version."""
    paths = [os.environ["FOUNDRY_PYTHON"]] if os.environ.get("FOUNDRY_PYTHON") else []
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        if os.path.isdir(directory):
            paths += sorted(
                os.path.join(directory, f) for f in os.listdir(directory) if CANDIDATE.match(f)
            )
    found: dict[tuple[int, int, int], str] = {}
    for path in paths:
        try:
            out = subprocess.run(
                [path, "-c", "import sys; print(*sys.version_info[:3])"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) == 3:
            found.setdefault((int(out[0]), int(out[1]), int(out[2])), path)
    return found


def interpreter(build: Path) -> None:
    asked = requested(build)
    if asked is None:
        print(os.environ.get("FOUNDRY_PYTHON") or shutil.which("python3") or "python3")
        return
    found = interpreters()
    name, prefix = asked
    matches = sorted(v for v in found if v[: len(prefix)] == prefix)
    wanted = ".".join(map(str, prefix))
    if not matches:
        there = ", ".join(f"{'.'.join(map(str, v))} ({p})" for v, p in sorted(found.items()))
        fail(
            f"{name} asks for Python {wanted}, but this node has only Python "
            f"{there or 'none'}: change {name} to one of those"
        )
    print(
        f"-----> {name} asks for Python {wanted}: using {'.'.join(map(str, matches[-1]))}",
        file=sys.stderr,
    )
    print(found[matches[-1]])


HINT_MODULES = ("app.py", "main.py", "wsgi.py", "asgi.py", "*/wsgi.py", "*/asgi.py")
OBJECT = re.compile(
    r"^(?:(?:async\s+)?def\s+(app|application)\s*\(|(app|application)\s*[:=])", re.M
)
ASGI = re.compile(
    r"FastAPI|Starlette|Quart|get_asgi_application|async\s+def\s+(app|application)"
    r"\s*\(|Litestar|Sanic"
)


def procfile_hint(build: Path) -> None:
    if (build / "Procfile").exists():
        return
    for pattern in HINT_MODULES:
        for path in sorted(build.glob(pattern)):
            text = path.read_text(errors="replace")
            found = OBJECT.search(text)
            if not found:
                continue
            module = ".".join(path.relative_to(build).with_suffix("").parts)
            obj = found.group(1) or found.group(2)
            asgi = bool(ASGI.search(text)) or path.name == "asgi.py"
            server = "uvicorn" if asgi else "gunicorn"
            line = (
                f"web: uvicorn {module}:{obj} --host 0.0.0.0 --port $PORT"
                if asgi
                else f"web: gunicorn {module}:{obj} --bind 0.0.0.0:$PORT"
            )
            deps = " ".join(
                f.read_text(errors="replace")
                for f in (build / "requirements.txt", build / "pyproject.toml")
                if f.is_file()
            )
            extra = "" if server in deps.lower() else f", and add {server} to your dependencies"
            fail(
                f"No Procfile: {path.relative_to(build)} looks like an "
                f"{'ASGI' if asgi else 'WSGI'} app ({obj!r}), but Foundry does not guess how "
                f"to serve it. Add a Procfile with the line `{line}`{extra}"
            )


def dependencies(build: Path) -> None:
    import tomllib

    try:
        doc = tomllib.loads((build / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"pyproject.toml cannot be read: {e}")
        return
    deps = doc.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        fail("pyproject.toml: [project] dependencies must be a list of strings")
    print("\n".join(deps))


if __name__ == "__main__":
    commands = {
        "interpreter": interpreter,
        "procfile-hint": procfile_hint,
        "dependencies": dependencies,
    }
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        fail(f"usage: pyapp.py {'|'.join(commands)} BUILD_DIR")
    commands[sys.argv[1]](Path(sys.argv[2]))
