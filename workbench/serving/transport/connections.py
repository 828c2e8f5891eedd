"""uvicorn's HTTP/1.1 protocol (httptools) with a deadline for a request's head: a client that opens a
connection, or starts a request, and does not finish its request line and headers within
``WORKBENCH_SERVE_HEADER_TIMEOUT`` seconds is disconnected (slowloris), so idle or trickling clients cannot hold
the server's connections. uvicorn itself bounds idle keep-alive connections (``timeout_keep_alive``) and the
number of connections (``limit_concurrency``: a 503 past it); the app bounds a body's size and arrival time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from workbench import settings

log = logging.getLogger("workbench.serving")


class HeadDeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes a connection whose request head takes too long."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout = float(settings.SERVE_HEADER_TIMEOUT_S.get())
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timeout > 0:
            self._head_timer = self.loop.call_later(self._head_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its head arrived in time
        log.info("closing a connection from %s: no complete request head within %g s", self.client, self._head_timeout)
        self.transport.close()
