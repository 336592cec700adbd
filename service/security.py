"""The service's front door: authentication before the body, failed-key throttling, security
headers, and log lines that a client cannot forge.

``AuthGate`` is an ASGI middleware that checks the API key of every ``/v1`` request from its
headers alone, before a single byte of the body is read: a request without a valid key gets
``401`` at once (with ``Connection: close``, so an unread multi-gigabyte body is not drained),
whatever ``Content-Length`` it declares. The verified caller is left in the request scope for
the route's role check (``service.deps``), so the key is looked up once per request.

``FailedKeyThrottle`` counts wrong keys per client address (a token bucket): past its burst a
wrong key gets ``429`` with ``Retry-After`` instead of ``401``. A valid key always passes, so
an attacker behind the same address (a reverse proxy, a NAT) cannot lock officers out.

``SecurityHeaders`` adds a strict Content-Security-Policy, ``X-Content-Type-Options: nosniff``
and frame protection to every response, and makes redirects relative so that the ``Host``
header a client sends never ends up in a ``Location``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.keys import Principal
from service.problems import PROBLEM_MEDIA_TYPE, ProblemError, language_of

logger = logging.getLogger(__name__)

PRINCIPAL_SCOPE_KEY = "cites_principal"
"""Where ``AuthGate`` leaves the verified :class:`Principal` in ``scope["state"]``."""

MAX_KEY_HEADER_CHARS = 256
"""A key is ``cv_<8 hex>_<43 chars>``; anything much longer is refused without a lookup."""

PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; worker-src 'self' blob:; "
    "manifest-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The Content-Security-Policy of every response: scripts, styles and fetches from this origin
only (no inline script or style), images also from ``blob:`` (the page shows uploads and heat
maps through object URLs), no plugins, no framing. ``'wasm-unsafe-eval'`` lets the page compile
WebAssembly (an in-browser model) but never evaluates JavaScript strings."""

DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""The interactive API docs (Swagger UI, ReDoc, from this origin: service.apidocs) bootstrap
with an inline script; ReDoc runs its search in a ``blob:`` worker."""

DOCS_PATHS = ("/docs", "/redoc")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``text`` with control characters (newlines included) written as ``\\xNN`` escapes, so a
    value from a client cannot start a new, forged, log line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def install_log_escaping() -> None:
    """Escape control characters in the arguments of every log record of this process.

    Request paths, file names and other client-controlled strings reach log messages as
    ``%s`` arguments; escaping them at record creation covers every logger and handler
    (uvicorn's included) without each call site having to remember. Idempotent.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_cites_escaping", False):
        return

    def escaping_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if isinstance(record.args, tuple):
            record.args = tuple(_escape_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _escape_arg(v) for k, v in record.args.items()}
        return record

    escaping_factory._cites_escaping = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(escaping_factory)


def _escape_arg(value: object) -> object:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, bytes):
        return escape_control(value.decode("latin-1"))
    return value


# ---- failed key attempts ------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailedKeyThrottle:
    """A token bucket of wrong-key attempts per client address.

    Each address may fail ``burst`` times in a row; the allowance refills at ``per_minute``
    attempts a minute. While the bucket is empty, wrong keys from that address are answered
    ``429`` with ``Retry-After``. Valid keys never consume tokens and are never refused. At
    most ``max_addresses`` addresses are tracked (least recently failing ones are forgotten
    first), so the table cannot grow without bound.
    """

    def __init__(
        self,
        burst: int,
        per_minute: float,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _refilled(self, address: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try a key again, or None when it may now."""
        with self._lock:
            bucket = self._refilled(address, self._clock())
            if bucket is None or bucket.tokens >= 1.0:
                return None
            if self.rate <= 0:
                return 3600
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def record_failure(self, address: str) -> None:
        """Spend one attempt of ``address``."""
        with self._lock:
            now = self._clock()
            bucket = self._refilled(address, now)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), updated=now)
                self._buckets[address] = bucket
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)


# ---- authentication before the body ---------------------------------------------------------


def key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
    (the bearer token wins, as in ``service.deps``); None when neither is present."""
    bearer: str | None = None
    api_key: str | None = None
    for name, value in headers:
        if name == b"authorization" and bearer is None:
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer or api_key


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


def client_address(scope: Scope) -> str:
    """The peer address of a request (the proxy's, behind a reverse proxy)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def unauthenticated(detail: str, error: str | None = None) -> ProblemError:
    """The ``401`` problem, with the ``WWW-Authenticate`` challenge of RFC 6750."""
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return ProblemError(
        401,
        "unauthenticated",
        detail,
        title="Unauthenticated",
        headers={"WWW-Authenticate": challenge},
    )


NO_KEY_DETAIL = (
    "This request needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'. "
    "Make one with `cites-vision keys create --role officer --name NAME`."
)
BAD_KEY_DETAIL = "The API key is unknown, malformed or revoked; ask an administrator for a new one."


async def send_problem(
    send: Send,
    problem: ProblemError,
    instance: str | None,
    *,
    close: bool = False,
    language: str = "en",
) -> None:
    """Answer with ``problem`` straight from ASGI (before any framework code ran), in
    ``language`` (:func:`service.problems.language_of` the request's headers)."""
    document = problem.to_dict(escape_control(instance) if instance else None, language)
    body = json.dumps(document).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"content-language", language.encode()),
    ]
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in problem.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthGate:
    """Verifies the API key of every request under ``protected_prefix`` before its body is read.

    ``verify(key)`` (blocking: it reads the database) runs in a worker thread and returns the
    :class:`Principal` or None. ``on_failure(reason)`` is called for each refused key (reasons
    ``missing``, ``invalid``, ``throttled``), e.g. to count it in ``/metrics``.
    """

    def __init__(
        self,
        app: ASGIApp,
        verify: Callable[[Scope, str], Principal | None],
        throttle: FailedKeyThrottle,
        *,
        allow_anonymous: Callable[[Scope], bool] = lambda scope: False,
        on_failure: Callable[[str], None] = lambda reason: None,
        protected_prefix: str = "/v1/",
    ) -> None:
        self.app = app
        self.verify = verify
        self.throttle = throttle
        self.allow_anonymous = allow_anonymous
        self.on_failure = on_failure
        self.protected_prefix = protected_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, then run the app (or answer 401/429 without touching the body)."""
        if scope["type"] != "http" or not scope["path"].startswith(self.protected_prefix):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        close = _has_body(scope)
        language = language_of(scope.get("headers", []))
        key = key_from_headers(scope.get("headers", []))
        if key is None:
            if self.allow_anonymous(scope):
                await self.app(scope, receive, send)
                return
            self.on_failure("missing")
            await send_problem(
                send, unauthenticated(NO_KEY_DETAIL), path, close=close, language=language
            )
            return
        address = client_address(scope)
        principal = None
        if len(key) <= MAX_KEY_HEADER_CHARS:
            try:
                principal = await anyio.to_thread.run_sync(self.verify, scope, key)
            except Exception as exc:  # the key store (database) fails: not the caller's fault
                logger.error("cannot verify a key on %s: %s", path, exc)
                problem = ProblemError(
                    503,
                    "database-unavailable",
                    "The database does not answer right now; retry shortly.",
                    title="Database unavailable",
                    headers={"Retry-After": "5"},
                )
                await send_problem(send, problem, path, close=close, language=language)
                return
        if principal is None:
            wait = self.throttle.retry_after(address)
            self.throttle.record_failure(address)
            if wait is not None:
                self.on_failure("throttled")
                logger.warning("throttled key attempts from %s (%s)", address, path)
                problem = ProblemError(
                    429,
                    "too-many-key-failures",
                    f"Too many requests with a wrong API key from this address; wait {wait} s "
                    "and send a valid key.",
                    title="Too many failed key attempts",
                    headers={"Retry-After": str(wait)},
                )
                await send_problem(send, problem, path, close=close, language=language)
                return
            self.on_failure("invalid")
            logger.info("refused an unknown or revoked key from %s (%s)", address, path)
            await send_problem(
                send,
                unauthenticated(BAD_KEY_DETAIL, "invalid_token"),
                path,
                close=close,
                language=language,
            )
            return
        scope.setdefault("state", {})[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)


# ---- security headers ----------------------------------------------------------------------


class SecurityHeaders:
    """Adds CSP, ``nosniff``, frame protection and a referrer policy to every response, and
    turns absolute ``Location`` headers into paths (a redirect never names the client's
    ``Host``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        csp = DOCS_CSP if path in DOCS_PATHS or path.startswith("/docs/") else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in _OWN_HEADERS
                ]
                headers = [
                    (name, _relative_location(value) if name.lower() == b"location" else value)
                    for name, value in headers
                ]
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OWN_HEADERS = frozenset(
    {
        b"content-security-policy",
        b"x-content-type-options",
        b"x-frame-options",
        b"referrer-policy",
        b"cross-origin-resource-policy",
    }
)


def _relative_location(value: bytes) -> bytes:
    """``http://any.host/a/b?c`` -> ``/a/b?c``; relative locations are kept as they are."""
    text = value.decode("latin-1")
    parts = urlsplit(text)
    if not parts.scheme and not parts.netloc:
        return value
    path = "/" + parts.path.lstrip("/")  # never "//host": that would be another origin
    return urlunsplit(("", "", path, parts.query, parts.fragment)).encode("latin-1")


# ---- clean request lines ---------------------------------------------------------------------

SINGLE_LINE_TEXT = r"^[^\x00-\x1f\x7f]*$"
"""Pattern of one-line text fields (case references, ids, labels): no control characters."""
MULTI_LINE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Pattern of free text (notes): tabs and line breaks allowed, other control characters not."""

_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")


class RejectControlCharacters:
    """Answers ``422`` to a request whose path or query string (percent-decoded) contains a
    control character: NUL and friends never reach a route, a database (PostgreSQL refuses NUL
    in text) or a log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request line, then run the app."""
        if scope["type"] == "http":
            path = scope["path"].encode("utf-8", "surrogateescape")
            query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
            if _CONTROL_BYTES.search(path) or _CONTROL_BYTES.search(query):
                problem = ProblemError(
                    422,
                    "control-characters",
                    "The request path or query contains control characters (such as NUL or a "
                    "line break); remove them.",
                    title="Invalid characters",
                )
                await send_problem(
                    send,
                    problem,
                    None,
                    close=_has_body(scope),
                    language=language_of(scope["headers"]),
                )
                return
        await self.app(scope, receive, send)


def refuse_control_characters(
    fields: dict[str, str | None], multi_line: tuple[str, ...] = ()
) -> None:
    """Raise a ``422`` problem naming the ``fields`` whose text holds a control character (line
    breaks and tabs are allowed in the ``multi_line`` ones)."""
    bad = [
        name
        for name, value in fields.items()
        if value
        and re.search(MULTI_LINE_TEXT if name in multi_line else SINGLE_LINE_TEXT, value) is None
    ]
    if bad:
        raise ProblemError(
            422,
            "control-characters",
            "These fields contain control characters (such as NUL): " + ", ".join(bad) + ".",
            title="Invalid characters",
        )
