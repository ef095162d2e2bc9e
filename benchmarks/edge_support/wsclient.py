"""Websocket echo load: 16 connections each send a small masked frame and wait for it
back, for a number of seconds; prints messages per second."""

from __future__ import annotations

import sys

import trio

CONNECTIONS = 16
FRAME = b"\x81\x9f" + b"\x01\x02\x03\x04" + bytes(31)  # masked 31-byte text frame


async def one(port: int, host: str, stop_at: float, counts: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 101"), data[:100]
    while trio.current_time() < stop_at:
        await stream.send_all(FRAME)
        got = 0
        while got < len(FRAME):
            got += len(await stream.receive_some(65536))
        counts[0] += 1
    await stream.aclose()


async def main(port: int, host: str, seconds: float) -> None:
    counts = [0]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(CONNECTIONS):
            nursery.start_soon(one, port, host, start + seconds, counts)
    print(counts[0] / (trio.current_time() - start))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
