"""Ignores SIGTERM and leaves a setsid'd grandchild (also ignoring SIGTERM) behind,
named `stubborn-child-<app>` so a test can look for it from the host."""

import os
import signal
import subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
name = "stubborn-child-" + os.environ.get("FOUNDRY_APP_NAME", "x")
# The middle shell exits at once: the grandchild is orphaned in a session of its own.
subprocess.run(["setsid", "sh", "-c", f'python3 -c "{child}" {name} >/dev/null 2>&1 &'], check=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"stubborn\n")


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
