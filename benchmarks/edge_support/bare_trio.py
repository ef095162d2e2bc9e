"""The least a trio proxy can do, as a yardstick for the edge: what trio and the kernel
cost per request on this machine, with no HTTP parsing, routing, headers or timeouts.

    python -m benchmarks.edge_support.bare_trio PORT BACKEND_PORT WORKERS

Each worker (forked, sharing the port with SO_REUSEPORT) reads a request head,
sends it unchanged to a pooled backend connection, reads the answer up to its
Content-Length and writes it back. It is only right for the benchmark's one tiny
GET against its one nginx backend; it is not a proxy anyone should run.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import trio

CHUNK = 65536


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _upstream(port: int, pool: list[socket.socket]) -> socket.socket:
    if pool:
        return pool.pop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.connect(("127.0.0.1", port))
    except BlockingIOError:
        await trio.lowlevel.wait_writable(sock)
    return sock


async def _serve(client: socket.socket, backend: int, pool: list[socket.socket]) -> None:
    client.setblocking(False)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    with client:
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = await _recv(client)
                    if not data:
                        return
                    pending += data
                end = pending.index(b"\r\n\r\n") + 4
                request, pending = pending[:end], pending[end:]
                upstream = await _upstream(backend, pool)
                upstream.send(request)
                answer = b""
                while True:
                    data = await _recv(upstream)
                    if not data:  # a pooled connection the backend closed: once more, fresh
                        upstream.close()
                        upstream = await _upstream(backend, [])
                        upstream.send(request)
                        answer = b""
                        continue
                    answer += data
                    head_end = answer.find(b"\r\n\r\n")
                    if head_end >= 0:
                        at = answer.lower().index(b"content-length:") + 15
                        length = int(answer[at : answer.index(b"\r\n", at)])
                        if len(answer) >= head_end + 4 + length:
                            break
                pool.append(upstream)
                client.send(answer)
        except OSError:
            return


async def _main(port: int, backend: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    pool: list[socket.socket] = []
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                while True:
                    sock, _ = listener.accept()
                    nursery.start_soon(_serve, sock, backend, pool)
            except BlockingIOError:
                pass


def main() -> None:
    port, backend, workers = (int(arg) for arg in sys.argv[1:4])
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    trio.run(_main, port, backend)


if __name__ == "__main__":
    main()
