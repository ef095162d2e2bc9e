"""A stdlib web app for serverless tests: `/` answers at once, `/slow` after 0.3 s, and
`/ws` accepts a websocket upgrade and then holds the connection open until the client
closes it (enough to count as an open tunnel)."""

import base64
import hashlib
import http.server
import os
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            while self.rfile.read1(4096):
                pass
            self.close_connection = True
            return
        if self.path == "/slow":
            time.sleep(0.3)
        body = f"{os.environ.get('FOUNDRY_INSTANCE_INDEX')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
server.serve_forever()
