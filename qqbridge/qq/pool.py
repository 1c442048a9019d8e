"""One HTTP client for all QQ accounts: `QQConnections`.

An `httpx.AsyncClient` with its transport, connection pool and TLS context costs
about 0.9 MB; one per account made 1,000 idle accounts weigh 947 MB. Every `QQClient`
of one (server URL, local address) now borrows the same client from here, made by the
composition root and closed at shutdown after the accounts are stopped; a QQClient's
`aclose` leaves a borrowed client open.

The protocol still has one request per TCP connection (`Connection: close`,
PROTOCOL.md §1), so the pool keeps no idle connection; it bounds how many requests
are in flight at once (`max_connections`), a request waiting for a free connection
within its own deadline.
"""

from __future__ import annotations

import httpx

DEFAULT_MAX_CONNECTIONS = 256


class QQConnections:
    def __init__(self, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def client(self, local_address: str | None = None) -> httpx.AsyncClient:
        """The shared client for requests leaving from `local_address` (None: any).
        Timeouts are set per request by the QQClient, not here."""
        client = self._clients.get(local_address)
        if client is None or client.is_closed:
            transport = httpx.AsyncHTTPTransport(
                local_address=local_address, retries=0,
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=0),
            )  # fmt: skip
            client = httpx.AsyncClient(transport=transport, follow_redirects=False)
            self._clients[local_address] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
