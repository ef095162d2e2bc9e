"""A small static file server for the static pack: serves $HOME on $PORT.

No directory listings; `/dir/` serves `dir/index.html`; paths never leave $HOME.
"""

from __future__ import annotations

import functools
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "Not Found")
        return None

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {fmt % args}\n")
        sys.stdout.flush()


def main() -> None:
    root = os.environ.get("HOME", ".")
    port = int(os.environ["PORT"])
    handler = functools.partial(Handler, directory=root)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)
    server.daemon_threads = True
    print(f"serving {root} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
