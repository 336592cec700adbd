"""The HTTP server the service ships: uvicorn on h11 with header, idle and read limits.

uvicorn bounds neither how long a client may take to send its request head nor how long a
request body may stall, and its default parser (httptools) accepts headers of any size. This
module runs uvicorn's h11 protocol with:

- a header size limit (``h11_max_incomplete_event_size``): a longer request head gets ``431``;
- a request-head deadline: a connection that has not sent a complete head within
  ``header_timeout_s`` of connecting (or of its first byte after a keep-alive pause) gets
  ``408`` and is closed, so idle and slowloris sockets cannot pile up;
- a body read timeout: a request whose body stalls for ``body_timeout_s`` is cut off (the app
  sees a client disconnect);
- ``timeout_keep_alive`` for idle keep-alive connections and ``limit_concurrency`` (``503`` past
  it), both uvicorn settings.

The server's own error answers (malformed request, head too large, timeouts) are
``application/problem+json`` like every other error of the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpLimits:
    """The connection limits of the shipped server (see docs/security.md)."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_connections: int = 1000

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``."""
        return {
            "http": hardened_protocol(self),
            "h11_max_incomplete_event_size": self.max_header_bytes,
            "timeout_keep_alive": self.keep_alive_s,
            "limit_concurrency": self.max_connections,
        }


_SLUGS = {400: "bad-request", 408: "request-timeout", 431: "headers-too-large"}
_DETAILS = {
    400: "The request is not valid HTTP/1.1.",
    408: "The request was not sent in time; the connection is closed.",
    431: "The request head (request line and headers) is larger than {limit} bytes.",
}


def problem_bytes(status: int, limit: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a server-level problem answer."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(
        {
            "type": PROBLEM_BASE + _SLUGS.get(status, f"http-{status}"),
            "title": phrase,
            "status": status,
            "detail": _DETAILS.get(status, phrase).format(limit=limit),
        }
    ).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a body read timeout."""

    limits: HttpLimits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._timer_kind: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the head deadline as soon as the client connects."""
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm("head", self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timers of a closed connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Check the head size, feed h11, then keep the head deadline or restart the body idle
        timer."""
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._disarm()
            self._send_problem(431)
            return
        super().data_received(data)
        self._update_timer()

    def _head_too_large(self, data: bytes) -> bool:
        """True when the request head being received is over the limit. h11 enforces its limit
        only on an *incomplete* head, so a large head that arrives in one read would pass."""
        window = self.conn.trailing_data[0] + data
        end = window.find(b"\r\n\r\n")
        return (end if end != -1 else len(window)) > self.limits.max_header_bytes

    def on_response_complete(self) -> None:
        """Between requests the keep-alive timer of uvicorn applies."""
        super().on_response_complete()
        self._update_timer()

    def _update_timer(self) -> None:
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.conn.trailing_data[0] or self._timer_kind == "head":
                if self._timer_kind != "head":  # first bytes of the next request's head
                    self._arm("head", self.limits.header_timeout_s)
            else:
                self._disarm()  # waiting for a next request: uvicorn's keep-alive timer runs
        elif state is h11.SEND_BODY:
            self._arm("body", self.limits.body_timeout_s)
        else:
            self._disarm()

    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._timer_kind = kind
        self._read_timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._timer_kind = None

    def _timed_out(self) -> None:
        kind = self._timer_kind
        self._read_timer = None
        self._timer_kind = None
        if self.transport.is_closing():
            return
        if kind == "body" and self.flow.read_paused:
            # the app has not consumed what arrived: not the client's fault
            self._arm("body", self.limits.body_timeout_s)
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.info("closing the connection of %s: request %s not received in time", client, kind)
        if kind == "head" and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_problem(408)
            return
        self.transport.close()

    def _send_problem(self, status: int) -> None:
        """Write a problem answer straight to the socket and close it (the connection is done
        with; h11's state no longer matters)."""
        headers, body = problem_bytes(status, self.limits.max_header_bytes)
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A malformed or too large request head: ``400`` or ``431`` as a problem document."""
        error = sys.exc_info()[1]  # called from uvicorn's ``except h11.RemoteProtocolError``
        status = getattr(error, "error_status_hint", 400)
        if status not in _SLUGS:
            status = 400
        self._disarm()
        self._send_problem(status)


def hardened_protocol(limits: HttpLimits) -> type[HardenedH11Protocol]:
    """A protocol class bound to ``limits`` (uvicorn takes a class, not an instance)."""
    return type("ConfiguredH11Protocol", (HardenedH11Protocol,), {"limits": limits})
