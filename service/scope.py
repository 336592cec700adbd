"""Record scope: which identifications a key may read (``CITES_RECORD_SCOPE``).

- ``all`` (the default): every key reads every identification, as the role matrix says. One
  deployment serves one agency, whose posts share case evidence (an officer at the airport
  looks up the seizure a colleague at the port photographed); trainers need every record.
- ``key``: officer and scanner keys read only the identifications made with their own key.
- ``group``: they read those made by any key of their group. A key's group is the part of its
  name before the first ``/`` (``keys create --name antwerp-port/jane`` is in group
  ``antwerp-port``); a name without ``/`` is a group of its own.

Trainer and admin keys always read everything (export, review, model work). A record outside a
caller's scope answers ``404``, exactly like one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.keys import Principal, Role
from service.tables import ApiKey

GROUP_SEPARATOR = "/"
UNSCOPED_ROLES = frozenset({Role.TRAINER, Role.ADMIN})


class RecordScope(StrEnum):
    """The values of ``CITES_RECORD_SCOPE``."""

    ALL = "all"
    KEY = "key"
    GROUP = "group"


@dataclass(frozen=True)
class Visibility:
    """The key ids whose records a caller may read; None means every record."""

    key_ids: frozenset[str] | None = None

    def allows(self, created_by: str | None) -> bool:
        """True when a record made by key ``created_by`` is visible."""
        return self.key_ids is None or (created_by is not None and created_by in self.key_ids)


EVERYTHING = Visibility()


def key_group(name: str) -> str:
    """The group of a key named ``name``: its part before the first ``/``."""
    return name.split(GROUP_SEPARATOR, 1)[0].strip()


def visibility_for(session: Session, principal: Principal, scope: RecordScope) -> Visibility:
    """What ``principal`` may read under ``scope``."""
    if scope is RecordScope.ALL or principal.role in UNSCOPED_ROLES:
        return EVERYTHING
    if principal.key_id is None:  # anonymous development mode acts as an admin
        return EVERYTHING
    if scope is RecordScope.KEY:
        return Visibility(frozenset({principal.key_id}))
    group = key_group(principal.name)
    members = session.scalars(
        select(ApiKey.id).where(
            or_(
                ApiKey.name == group,
                ApiKey.name.startswith(group + GROUP_SEPARATOR, autoescape=True),
            )
        )
    ).all()
    return Visibility(frozenset(members) | {principal.key_id})
