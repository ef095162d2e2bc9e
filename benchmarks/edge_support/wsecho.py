"""A websocket echo backend for benchmarks: answers the handshake with 101, then
sends every byte back (frames stay as sent, which is all a byte-counting client needs)."""

from __future__ import annotations

import sys

import trio

ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


async def echo(stream: trio.SocketStream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        data += chunk
    await stream.send_all(ANSWER + data.partition(b"\r\n\r\n")[2])
    try:
        while chunk := await stream.receive_some(65536):
            await stream.send_all(chunk)
    except trio.BrokenResourceError:
        pass


async def main(port: int) -> None:
    await trio.serve_tcp(echo, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
