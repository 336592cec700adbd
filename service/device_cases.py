"""Cases made on the officer's phone without network, synced later (docs/web.md, "Offline use").

The page uploads the photo as an ordinary identification (several photos of one item as a
multi-view one), plus the answer the phone gave (``device_answer``: a JSON form field, with the
number of photos the phone fused in ``views``). The service identifies the photos itself as
always and stores both: its own answer is the identification; the phone's goes under ``device`` with
whether the two agree. ``case_id`` (a UUID the phone made) makes the upload idempotent: a retry
after a lost response returns the case already stored instead of a second one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from model.fusion import MAX_VIEWS
from service.keys import Principal
from service.problems import ProblemError
from service.tables import Identification

MAX_DEVICE_ANSWER_CHARS = 20_000
CLOCK_SKEW = timedelta(days=1)
"""How far a phone's clock may run ahead of the service's (its ``made_at`` is its own)."""

DecisionKind = Literal["taxon", "lookalike", "uncertain", "outside_training_domain"]


class DeviceDecision(BaseModel):
    """The phone's decision (the fields the page's interpreter of the offline package sets)."""

    model_config = ConfigDict(extra="ignore")

    kind: DecisionKind
    rule: str = Field(max_length=100)
    label: str | None = Field(default=None, max_length=200)
    taxon_id: str | None = Field(default=None, max_length=200)
    rank: str | None = Field(default=None, max_length=40)
    appendix: Literal["I", "II", "III"] | None = None
    probability: float = Field(ge=0.0, le=1.0)
    refer_to_expert: bool


class DeviceCandidate(BaseModel):
    """One of the phone's top labels."""

    model_config = ConfigDict(extra="ignore")

    label: str = Field(max_length=200)
    probability: float = Field(ge=0.0, le=1.0)


class DeviceAnswer(BaseModel):
    """What the phone answered offline, as the page sends it when it syncs."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    made_at: datetime
    model_version: str = Field(min_length=1, max_length=200)
    runtime: str = Field(max_length=200)
    decision: DeviceDecision
    top_k: list[DeviceCandidate] = Field(max_length=20)
    ood_score: float | None = None
    inference_ms: float | None = Field(default=None, ge=0.0)
    views: int = Field(default=1, ge=1, le=MAX_VIEWS)
    """How many photos of the item the phone fused into its answer (1: one photo)."""


def parse_device_answer(text: str | None) -> DeviceAnswer | None:
    """The ``device_answer`` form field, checked; a 422 problem says what is wrong."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_DEVICE_ANSWER_CHARS:
        raise ProblemError(
            422,
            "invalid-device-answer",
            f"device_answer is longer than {MAX_DEVICE_ANSWER_CHARS} characters.",
            title="Invalid device answer",
        )
    try:
        answer = DeviceAnswer.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else _first_error(exc)
        raise ProblemError(
            422,
            "invalid-device-answer",
            f"device_answer is not a valid answer made on a device: {reason}.",
            title="Invalid device answer",
        ) from None
    made_at = answer.made_at if answer.made_at.tzinfo else answer.made_at.replace(tzinfo=UTC)
    if made_at > datetime.now(UTC) + CLOCK_SKEW:
        raise ProblemError(
            422,
            "invalid-device-answer",
            "device_answer.made_at is in the future: check the phone's clock.",
            title="Invalid device answer",
        )
    return answer.model_copy(update={"made_at": made_at})


def check_device_views(answer: DeviceAnswer | None, photos: int) -> None:
    """A 422 problem when the phone's answer was made from another number of photos than the
    upload carries: the two answers would not be about the same thing."""
    if answer is None or answer.views == photos:
        return
    raise ProblemError(
        422,
        "invalid-device-answer",
        f"device_answer was made from {answer.views} photo(s), but the upload carries {photos}: "
        "send every photo of the case, as one multi-view identification when there are several.",
        title="Invalid device answer",
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))


def device_record(answer: DeviceAnswer, server_result: dict[str, Any]) -> dict[str, Any]:
    """What is stored under ``device`` in the identification: the phone's answer and whether
    the service's own decision agrees (same kind, label, taxon and appendix)."""
    server = server_result["decision"]
    mine = answer.decision
    server_taxon = (server.get("taxon") or {}).get("id")
    agrees = (
        mine.kind == server["kind"]
        and mine.label == server["label"]
        and mine.taxon_id == server_taxon
        and mine.appendix == server["appendix"]
    )
    return {
        "made_on_device": True,
        "case_id": answer.case_id,
        "made_at": answer.made_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "model_version": answer.model_version,
        "runtime": answer.runtime,
        "decision": mine.model_dump(),
        "top_k": [c.model_dump() for c in answer.top_k],
        "ood_score": answer.ood_score,
        "inference_ms": answer.inference_ms,
        "views": answer.views,
        "same_model_as_service": answer.model_version == server_result["model_version"],
        "agrees_with_service": agrees,
    }


def find_synced(session: Session, principal: Principal, answer: DeviceAnswer) -> str | None:
    """The id of the identification already stored for this device case, or None.

    Looks only at this key's identifications made since the phone's ``made_at`` (a synced case
    is always stored after it was made), so the scan stays small."""
    since = answer.made_at - CLOCK_SKEW
    query = select(Identification.id, Identification.result).where(
        Identification.created_at >= since
    )
    query = query.where(
        Identification.created_by == principal.key_id
        if principal.key_id is not None
        else Identification.created_by.is_(None)
    )
    for ident_id, result in session.execute(query):
        device = (result or {}).get("device") or {}
        if device.get("case_id") == answer.case_id:
            return str(ident_id)
    return None
