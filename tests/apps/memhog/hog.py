"""Answers on its port, then eats memory until something stops it."""

import os
import socket
import time

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", int(os.environ["PORT"])))
sock.listen()
time.sleep(1)  # long enough for the health check to see the port
hoard = []
while True:
    hoard.append(bytearray(4 << 20))  # bytearray() zero-fills: the pages are really used
    time.sleep(0.005)
