"""Permit verification: identify each image, compare it with the declared permit data, store
the verification with its case, and render it in the reader's language.

The permit logic itself (codes, permit-only checks, image comparison, words) is
:mod:`model.permits`; this module wires it to the identification pipeline and the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from model.listing_status import listing_status
from model.permit_texts import TITLES, appendix_words, render
from model.permits import (
    Finding,
    ImageEvidence,
    Outcome,
    PermitAssessment,
    PermitDataError,
    assess_permit,
    combine,
    compare_image,
    parse_permit,
)
from model.taxonomy import Taxonomy
from service.identify import IdentificationPipeline, IdentifyOptions
from service.keys import Principal
from service.problems import ProblemError
from service.render import taxon_summary
from service.repository import iso, new_id, utcnow
from service.tables import Verification
from service.uploads import Upload

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadedImage:
    """One image of a verification request."""

    filename: str | None
    upload: Upload


def permit_problem(error: PermitDataError, language: str) -> ProblemError:
    """The 422 for refused permit data, in ``language``, one ``errors`` entry per field."""
    return ProblemError(
        422,
        "invalid-permit",
        error.message(language),
        title=TITLES["invalid_permit"].get(language, TITLES["invalid_permit"]["en"]),
        errors=[
            {"loc": ["body", issue.field], "msg": issue.message(language), "type": issue.code}
            for issue in error.issues
        ],
    )


class Verifier:
    """Runs verifications for the router: permit checks, identifications, comparison, storage."""

    def __init__(
        self,
        pipeline: IdentificationPipeline,
        taxonomy: Taxonomy,
        sessions: sessionmaker[Session],
    ) -> None:
        self.pipeline = pipeline
        self.taxonomy = taxonomy
        self.sessions = sessions

    async def verify(
        self,
        fields: Mapping[str, str | None],
        images: Sequence[UploadedImage],
        principal: Principal,
        *,
        case_ref: str | None,
        modality: str | None,
        language: str,
    ) -> dict[str, Any]:
        """Check ``images`` against the permit ``fields``; returns the stored result.

        Refused permit data raise a 422 before any image is looked at; an image that cannot be
        identified gives an ``inconclusive`` entry with the reason, like a batch entry.
        """
        try:
            permit = parse_permit(fields, self.taxonomy)
        except PermitDataError as exc:
            raise permit_problem(exc, language) from None
        created_at = utcnow()
        assessment = assess_permit(permit, self.taxonomy, created_at.date())
        predictor = self.pipeline.active_predictor()  # every image on one model
        options = self.pipeline.check_options(
            IdentifyOptions(modality=modality, origin_country=permit.origin, case_ref=case_ref),
        )

        async def one(image: UploadedImage) -> dict[str, Any]:
            return await self.pipeline.identify(
                image.upload, options, principal, predictor=predictor
            )

        outcomes = await asyncio.gather(*(one(i) for i in images), return_exceptions=True)
        entries: list[dict[str, Any]] = []
        for index, (image, outcome) in enumerate(zip(images, outcomes, strict=True)):
            entry: dict[str, Any] = {"index": index, "filename": image.filename}
            if isinstance(outcome, ProblemError):
                entry["error"] = outcome.to_dict()
                entry["finding"] = Finding(
                    "image", "inconclusive", "image_uncertain", _unread(assessment, outcome)
                ).to_dict()
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                entry.update(self._compare(assessment, outcome))
            entries.append(entry)
        checks = [f.to_dict() for f in assessment.checks]
        verdicts: list[Outcome] = [f.outcome for f in assessment.checks]
        verdicts += [e["finding"]["outcome"] for e in entries]
        verdict = combine(verdicts)
        declared = taxon_summary(self.taxonomy, assessment.taxon.id) if assessment.taxon else None
        result: dict[str, Any] = {
            "id": new_id(),
            "created_at": iso(created_at),
            "created_by": principal.name,
            "case_ref": case_ref,
            "model_version": predictor.version,
            "permit": permit.to_dict(),
            "origin_country": permit.origin,
            "declared_taxon": declared,
            "applicable_appendix": assessment.applicable_appendix,
            "listing": assessment.listing,
            "verdict": verdict,
            "checks": checks,
            "images": entries,
        }
        self._save(result, principal, created_at)
        logger.info(
            "verification %s of permit %s by key %s: %s",
            result["id"],
            permit.permit_number,
            principal.key_id or "anonymous",
            verdict,
        )
        return result

    def _compare(
        self, assessment: PermitAssessment, identification: Mapping[str, Any]
    ) -> dict[str, Any]:
        decision = identification["decision"]
        taxon = decision.get("taxon") or {}
        evidence = ImageEvidence(
            kind=str(decision["kind"]),
            taxon_id=taxon.get("id"),
            name=decision.get("label_name"),
            probability=float(decision["probability"]),
            model_reason=str(decision.get("explanation") or ""),
        )
        finding = compare_image(assessment, evidence, self.taxonomy)
        suggested_listing = None
        if evidence.taxon_id and evidence.taxon_id in self.taxonomy:
            resolution = self.taxonomy.appendix_for(evidence.taxon_id, assessment.permit.origin)
            suggested_listing = listing_status(self.taxonomy, resolution).to_dict()
        return {
            "identification_id": identification["id"],
            "identification_url": f"/v1/identifications/{identification['id']}",
            "image_url": identification["image"]["url"],
            "decision": {
                "kind": decision["kind"],
                "label": decision["label"],
                "taxon": decision.get("taxon"),
                "probability": decision["probability"],
                "appendix": finding.params.get("suggested_appendix"),
                "listing": suggested_listing,
            },
            "finding": finding.to_dict(),
        }

    def _save(self, result: dict[str, Any], principal: Principal, created_at: datetime) -> None:
        with self.sessions() as session:
            session.add(
                Verification(
                    id=result["id"],
                    created_at=created_at,
                    created_by=principal.key_id,
                    created_by_name=principal.name,
                    case_ref=result["case_ref"],
                    permit_number=result["permit"]["permit_number"],
                    declared_taxon=result["permit"]["scientific_name"],
                    verdict=result["verdict"],
                    result=result,
                )
            )
            session.commit()


def _unread(assessment: PermitAssessment, problem: ProblemError) -> dict[str, object]:
    return {
        "declared_name": assessment.taxon.scientific_name
        if assessment.taxon
        else assessment.permit.scientific_name,
        "declared_appendix": assessment.permit.appendix,
        "probability": 0.0,
        "model_reason": problem.detail,
        "model_kind": "unreadable",
    }


def _render_finding(stored: Mapping[str, Any], language: str) -> dict[str, Any]:
    finding = Finding(stored["check"], stored["outcome"], stored["code"], stored["params"])
    return {
        "check": finding.check,
        "outcome": finding.outcome,
        "code": finding.code,
        "reason": finding.reason(language),
    }


def _localise(taxon: Mapping[str, Any] | None, language: str) -> dict[str, Any] | None:
    if not taxon:
        return None
    body = dict(taxon)
    names = body.get("common_names") or {}
    body["common_name"] = names.get(language) or names.get("en")
    return body


def render_verification(result: Mapping[str, Any], language: str) -> dict[str, Any]:
    """A response body: the stored verification with every reason in ``language``."""
    body = dict(result)
    body["declared_taxon"] = _localise(result.get("declared_taxon"), language)
    applicable = result.get("applicable_appendix")
    body["applicable_appendix_text"] = (
        appendix_words(applicable, language) if applicable is not None else None
    )
    body["checks"] = [_render_finding(c, language) for c in result["checks"]]
    images = []
    for entry in result["images"]:
        rendered = {k: v for k, v in entry.items() if k != "finding"}
        finding = _render_finding(entry["finding"], language)
        rendered["verdict"] = finding["outcome"]
        rendered["reason"] = finding["reason"]
        if "decision" in entry:
            decision = dict(entry["decision"])
            decision["taxon"] = _localise(decision.get("taxon"), language)
            rendered["decision"] = decision
        images.append(rendered)
    body["images"] = images
    body["reasons"] = [c["reason"] for c in body["checks"] if c["outcome"] != "consistent"] + [
        render("image_number", {"n": i["index"] + 1, "reason": i["reason"]}, language)
        for i in images
        if i["verdict"] != "consistent"
    ]
    body["url"] = f"/v1/verifications/{result['id']}"
    return body


def get_verification(session: Session, verification_id: str) -> Verification:
    """The stored verification, or 404."""
    row = session.get(Verification, verification_id)
    if row is None:
        raise ProblemError(
            404,
            "not-found",
            f"No verification {verification_id!r}.",
            title="Verification not found",
        )
    return row


@dataclass(frozen=True)
class VerificationFilter:
    """Filters of the verification list."""

    case_ref: str | None = None
    permit_number: str | None = None
    verdict: str | None = None
    created_by: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_verifications(
    session: Session, filters: VerificationFilter, *, limit: int, offset: int
) -> tuple[list[Verification], int]:
    """A page of verifications, newest first, and the total that match."""
    query = select(Verification)
    if filters.case_ref is not None:
        query = query.where(Verification.case_ref == filters.case_ref)
    if filters.permit_number is not None:
        query = query.where(Verification.permit_number == filters.permit_number)
    if filters.verdict is not None:
        query = query.where(Verification.verdict == filters.verdict)
    if filters.created_by is not None:
        query = query.where(Verification.created_by == filters.created_by)
    if filters.since is not None:
        query = query.where(Verification.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Verification.created_at < filters.until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Verification.created_at.desc(), Verification.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)
