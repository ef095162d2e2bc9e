"""Bytes a push uploads with resource matching, for a 10,000-file app: the first push,
then a push after changing one file; and the seconds of the pack step (compile) when a
rebuild's dependencies are unchanged, for the python and node examples.

    python benchmarks/resource_match.py [--files 10000]

Runs a real `foundry up` in a temp home. The app is a static site (index.html plus
N-1 small files), so the build itself is quick; upload bytes are counted as the CLI
sends them: the listing (gzip'd; a delta after the first push), the tar of missing
files, and the build request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Foundry
from control.cli.client import Api
from control.cli.common import Console
from control.cli.follow import follow_build
from control.cli.sources import pack_source, scan_resources, send_listing, upload_files


def make_app(root: Path, files: int) -> None:
    (root / "index.html").write_text("<p>many files</p>\n")
    for i in range(files - 1):
        sub = root / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.txt").write_text(f"file {i}\n" + "x" * (200 + i % 300))


def push_counted(api: Api, name: str, directory: Path) -> dict[str, int]:
    """A resource-matched push, as `foundry push` does it, counting the bytes sent."""
    found = scan_resources(directory)
    assert found is not None
    listing, missing, listing_bytes = send_listing(api, name, found)
    files_bytes = upload_files(api, name, directory, found, missing, Console())
    build_body = {"listing": listing}
    started = api.request("POST", f"/v1/apps/{name}/builds", json=build_body, timeout=600)
    assert follow_build(api, name, started["build"], Console())["state"] == "STAGED"
    return {
        "listing_delta_bytes": listing_bytes,
        "file_tar_bytes": files_bytes,
        "build_request_bytes": len(json.dumps(build_body)),
        "total": listing_bytes + files_bytes + len(json.dumps(build_body)),
    }


def pack_step_seconds(api: Api, name: str) -> float:
    """Seconds from 'app detected' to 'Process types' in the app's latest build log."""
    lines = api.get(f"/v1/apps/{name}/logs", params={"limit": 5000})["lines"]
    last_start = max(i for i, ln in enumerate(lines) if "app detected" in ln["line"])
    start = lines[last_start]["ts"]
    end = next(ln["ts"] for ln in lines[last_start:] if "Process types" in ln["line"])
    return float(end - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with Foundry() as f, tempfile.TemporaryDirectory() as tmp:
        saved = json.loads((f.home / "cli.json").read_text())
        api = Api(saved["api"], Path(saved["token_file"]).read_text().strip())
        app = Path(tmp) / "many"
        app.mkdir()
        make_app(app, args.files)
        pack_source(app, Path(tmp) / "full.tgz")
        first = push_counted(api, "many", app)
        changed = next(app.glob("d010/*.txt"))
        changed.write_text(changed.read_text() + "one more line\n")
        second = push_counted(api, "many", app)
        print(
            f"app: {args.files} files; whole source as one tarball: "
            f"{(Path(tmp) / 'full.tgz').stat().st_size} bytes"
        )
        print(f"first push:            {first}")
        print(f"one file changed:      {second}")
        for example, name in (("hello-python", "bench-py"), ("hello-node", "bench-node")):
            for run in ("cold", "warm"):
                f.cli("push", str(ROOT / "examples" / example), "--name", name)
                print(f"{example} pack step ({run}): {pack_step_seconds(api, name):.2f} s")


if __name__ == "__main__":
    main()
