"""FastAPI dependencies: the app context, database sessions and the authenticated caller."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.context import AppContext
from service.keys import Principal, Role, verify_key
from service.problems import ProblemError
from service.security import PRINCIPAL_SCOPE_KEY

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer cv_...`")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (alternative header)"
)
ANONYMOUS = Principal(key_id=None, name="anonymous", role=Role.ADMIN)


def get_context(request: Request) -> AppContext:
    """The service's shared objects (built in the lifespan)."""
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """A database session for one request."""
    with context.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def authenticate(
    request: Request,
    context: ContextDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The caller of this request, from ``Authorization: Bearer`` or ``X-API-Key``.

    Looked up in the database on every request, so a revoked key stops working at once. The
    ASGI gate (``service.security.AuthGate``) has usually done so already, before the body was
    read; its verdict is reused here.
    """
    verified = request.scope.get("state", {}).get(PRINCIPAL_SCOPE_KEY)
    if isinstance(verified, Principal):
        return verified
    key = bearer.credentials if bearer is not None else api_key
    if not key:
        if context.settings.allow_anonymous:
            return ANONYMOUS
        raise ProblemError(
            401,
            "unauthenticated",
            "This request needs an API key: send 'Authorization: Bearer <key>' or "
            "'X-API-Key: <key>'. Make one with `cites-vision keys create --role officer "
            "--name NAME`.",
            title="Unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with context.sessions() as session:
        principal = verify_key(session, key)
    if principal is None:
        raise ProblemError(
            401,
            "unauthenticated",
            "The API key is unknown, malformed or revoked; ask an administrator for a new one.",
            title="Unauthenticated",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    context.note_key_use(principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets only ``roles`` through (403 otherwise)."""
    allowed = frozenset(roles)

    def check(principal: PrincipalDep) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise ProblemError(
                403,
                "forbidden",
                f"A key with role '{principal.role.value}' may not do this; it needs one of: "
                f"{names}.",
                title="Forbidden",
            )
        return principal

    return check


ALL_ROLES = tuple(Role)
Reader = Annotated[Principal, Depends(require(*ALL_ROLES))]
Identifier = Annotated[Principal, Depends(require(Role.OFFICER, Role.SCANNER, Role.ADMIN))]
BatchIdentifier = Annotated[Principal, Depends(require(Role.SCANNER, Role.ADMIN))]
FeedbackGiver = Annotated[Principal, Depends(require(Role.OFFICER, Role.TRAINER, Role.ADMIN))]
Exporter = Annotated[Principal, Depends(require(Role.TRAINER, Role.ADMIN))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
