"""Request body limit: refuse oversized uploads from ``Content-Length`` or while streaming.

The multipart parser would otherwise spool any amount of data to disk before the endpoint runs.
This ASGI middleware answers ``413`` at once when the declared length is too large, and counts
bytes as they arrive otherwise, stopping the read as soon as the limit is passed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import PROBLEM_MEDIA_TYPE, ProblemError, language_of

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024
"""Allowance for multipart boundaries and the small form fields next to the file(s)."""


class _BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """Applies ``limit_for(path)`` (bytes, or None for no limit) to each request body."""

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str], int | None],
        problem_for: Callable[[str, int], ProblemError],
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.problem_for = problem_for
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limit_for(path)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(scope, send, declared, limit)
            return
        received = 0
        started = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if received > limit:  # the app turned our exception into its own error
                    replaced = True
                    await self._reject(scope, send, received, limit)
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if started or replaced:
                raise
            await self._reject(scope, send, received, limit)
        except Exception as exc:
            # Frameworks may wrap our exception (e.g. as a form-parsing error).
            if received > limit and not started and not replaced:
                logger.debug("body limit hit inside the app: %r", exc)
                await self._reject(scope, send, received, limit)
                return
            raise

    async def _reject(self, scope: Scope, send: Send, size: int, limit: int) -> None:
        if self.on_reject is not None:
            self.on_reject()
        problem = self.problem_for(scope["path"], limit)
        language = language_of(scope.get("headers", []))
        body = json.dumps(problem.to_dict(scope["path"], language)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": problem.status,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        logger.info(
            "refused %s: body of %s+ bytes over the limit of %d", scope["path"], size, limit
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
