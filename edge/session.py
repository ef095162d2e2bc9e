"""One client connection as its requests see it (`Session`).

Rules kept here:
  * A connection is trusted (its X-Forwarded-* headers kept) only if its peer address
    is in the config's trusted list; decided once, when it is accepted.
  * A refused request is answered with `Connection: close` and then a lingering close
    (`Conn.linger`), so the client reads the answer even if it was still sending.
"""

from __future__ import annotations

import logging

from edge.accesslog import access_wanted
from edge.encode import error_response
from edge.http import ProtocolError, RequestParser
from edge.netio import Conn
from edge.peer import Peer
from edge.shared import Edge

log = logging.getLogger(__name__)


class Session:
    """One client connection as its requests see it: the stream, the general parser
    (used only for what the fast path hands over), and who the peer is."""

    def __init__(self, edge: Edge, stream: Conn) -> None:
        self.edge = edge
        self.config = edge.config
        self.client = Peer(stream, RequestParser(edge.config.limits))
        self.client_ip = stream.peer_ip()
        self.trusted = self.config.is_trusted(self.client_ip)
        self.logged = access_wanted(edge.shipper)  # whether its requests are logged at all

    async def refuse(self, error: ProtocolError) -> None:
        """Answer a malformed request with the status its error implies, and close."""
        log.info("edge-bad-request status=%d reason=%r", error.status, error.reason)
        reply = error_response(error.status, error.reason, close=True, code=error.code)
        await self.client.send(reply)
        await self.client.stream.linger()  # the client may still be sending
