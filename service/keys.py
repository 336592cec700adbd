"""API keys: creation, verification (constant time), listing and revocation.

A key is ``cv_<8 hex id>_<secret>``. The id is public (it appears in logs and listings); only
the SHA-256 of the secret is stored (the secret has 256 random bits, so a slow hash adds nothing
but latency) and compared with ``hmac.compare_digest``. Verification reads the database on every
request, so a revocation takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tables import ApiKey

logger = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^cv_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})$")


class Role(StrEnum):
    """What a key may do (see the role matrix in docs/api.md)."""

    OFFICER = "officer"
    SCANNER = "scanner"
    TRAINER = "trainer"
    ADMIN = "admin"


class ApiKeyError(ValueError):
    """A key operation with bad input (unknown role, unknown key id)."""


@dataclass(frozen=True)
class Principal:
    """The caller a request acts for."""

    key_id: str | None
    name: str
    role: Role


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed (never its secret)."""

    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _hash_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def _check_secret(secret: str, stored: str) -> bool:
    return hmac.compare_digest(_hash_secret(secret), stored)


def parse_role(value: str) -> Role:
    """The role named ``value``, or an error listing the valid ones."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise ApiKeyError(f"unknown role {value!r}; use one of {valid}") from None


def create_key(session: Session, name: str, role: Role | str) -> tuple[str, KeyInfo]:
    """Create and store a key; returns the full key (shown once) and its public info."""
    role = parse_role(role) if isinstance(role, str) else role
    name = name.strip()
    if not name or len(name) > 200:
        raise ApiKeyError("a key needs a name of 1 to 200 characters")
    while True:
        key_id = secrets.token_hex(4)
        if session.get(ApiKey, key_id) is None:
            break
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        name=name,
        role=role.value,
        secret_hash=_hash_secret(secret),
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.commit()
    logger.info("created API key %s (%s, role %s)", key_id, name, role.value)
    return f"cv_{key_id}_{secret}", _info(row)


def verify_key(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None (unknown, malformed, revoked)."""
    match = KEY_PATTERN.match(key.strip())
    if match is None:
        return None
    key_id, secret = match.groups()
    row = session.get(ApiKey, key_id)
    if row is None:
        # Spend the same time as a real check, so timing does not reveal which ids exist.
        _check_secret(secret, _DUMMY_HASH)
        return None
    if not _check_secret(secret, row.secret_hash) or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, name=row.name, role=Role(row.role))


def touch_key(session: Session, key_id: str) -> None:
    """Record that a key was used (best effort)."""
    row = session.get(ApiKey, key_id)
    if row is not None:
        row.last_used_at = datetime.now(UTC)
        session.commit()


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key, oldest first."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [_info(r) for r in rows]


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    """Revoke a key by its id (or the full key); effective for the next request."""
    match = KEY_PATTERN.match(key_id.strip())
    key_id = match.group(1) if match else key_id.strip()
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyError(f"no key with id {key_id!r}; see `cites-vision keys list`")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.commit()
        logger.info("revoked API key %s (%s)", row.id, row.name)
    return _info(row)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


_DUMMY_HASH = _hash_secret("x" * 43)
