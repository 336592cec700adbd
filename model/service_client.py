"""A small client of a running CITES Vision service's model API (standard library only).

Used by ``cites-vision models list|activate|rollback|history --url URL --key KEY`` and by
``cites-vision retrain --activate URL --key KEY``. Errors carry the service's
``application/problem+json`` detail, so the trainer sees why a call was refused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 120.0
"""Activation loads, verifies and warms up a bundle: allow it time."""


class ServiceError(RuntimeError):
    """The service refused a call or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceClient:
    """``url`` is the service's base URL (``http://host:8000``); ``key`` an API key."""

    url: str
    key: str
    timeout_s: float = TIMEOUT_S

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read().decode("utf-8") or "null")
        except urllib.error.HTTPError as exc:
            raise ServiceError(_problem_text(exc), exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"cannot reach {self.url}: {reason}") from None

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the bundles and which one is active."""
        return dict(self._call("GET", "/v1/models"))

    def active(self) -> dict[str, Any]:
        """``GET /v1/models/active``."""
        return dict(self._call("GET", "/v1/models/active"))

    def activate(
        self, version: str, reason: str | None = None, modality: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/models/{version}/activate``; ``reason`` is recorded in the history;
        ``modality`` (camera, xray) defaults to the bundle's own."""
        path = f"/v1/models/{urllib.parse.quote(version, safe='')}/activate" + _query(modality)
        return dict(self._call("POST", path, {"reason": reason} if reason else {}))

    def rollback(self, reason: str | None = None, modality: str | None = None) -> dict[str, Any]:
        """``POST /v1/models/rollback``: back to the version of ``modality`` (default camera)
        active before the current one."""
        path = "/v1/models/rollback" + _query(modality)
        return dict(self._call("POST", path, {"reason": reason} if reason else {}))

    def history(self, modality: str | None = None) -> dict[str, Any]:
        """``GET /v1/models/history``: every activation and rollback (of ``modality``, else of
        every modality), newest first."""
        return dict(self._call("GET", "/v1/models/history" + _query(modality)))


def _query(modality: str | None) -> str:
    return "" if modality is None else "?" + urllib.parse.urlencode({"modality": modality})


def _problem_text(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read().decode("utf-8"))
    except (ValueError, OSError):
        payload = None
    if isinstance(payload, dict) and (payload.get("detail") or payload.get("title")):
        return f"HTTP {exc.code}: {payload.get('detail') or payload.get('title')}"
    return f"HTTP {exc.code}: {exc.reason}"
