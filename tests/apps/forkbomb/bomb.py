"""Serves its count of started and refused processes while starting processes forever."""

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

counts = {"started": 0, "refused": 0}


def bomb() -> None:
    while True:
        try:
            subprocess.Popen(["sleep", "3600"])
            counts["started"] += 1
        except OSError:
            counts["refused"] += 1
            time.sleep(0.01)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(counts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


server = HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
threading.Thread(target=bomb, daemon=True).start()
server.serve_forever()
