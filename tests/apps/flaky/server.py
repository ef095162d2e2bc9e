"""A web app whose /healthz turns bad after a request to /break (stdlib only)."""

import http.server
import os

broken = False


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global broken
        if self.path == "/break":
            broken = True
        status = 500 if self.path == "/healthz" and broken else 200
        body = f"{os.environ.get('FOUNDRY_INSTANCE_INDEX')} {self.path}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
