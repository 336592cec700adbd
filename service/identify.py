"""The identification path, stage by stage, for one image (and for the photos of one object,
each taking the same stages, fused before rendering: :meth:`IdentificationPipeline.identify_views`):

admission -> decode -> inference -> rendering -> storage -> recording

* **admission** (:mod:`service.admission`): size limit, images in progress (503), per-key share
  (429) and the key's decode slot;
* **decode** (:mod:`service.decode`): the core's preprocessing and the bytes to store;
* **inference** (:mod:`service.inference`): the micro-batched, LitServe-shaped predictor API;
* **rendering** (:mod:`service.render`): the stored JSON body of the answer;
* **storage** (:mod:`service.storage`): the durable image write, in groups, with a reference
  count per sha256. It starts as soon as the stored bytes are known (for most JPEGs before
  decoding) and runs while the model answers; it is awaited before the database row is
  written, so the file is always on disk before a row refers to it;
* **recording** (:mod:`service.recorder`): the group commit of the rows.

A request that fails after its write started (503, 504, inference error, 507) gives its file
back to the storage stage, which deletes it unless a row or another request still needs it.

Routers call :class:`IdentificationPipeline`; it raises :class:`~service.problems.ProblemError`
for everything a caller can act on and holds no other HTTP code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from model.fusion import MAX_VIEWS
from model.heatmap import box_in_image
from model.imageio import ImageError
from model.predictor import Prediction, Predictor
from model.taxonomy import InvalidCountryError, Taxonomy
from service.admission import Admission
from service.decode import Decoded, DecodeStage
from service.device_cases import DeviceAnswer, device_record
from service.imagestore import PreparedImage
from service.inference import InferenceItem, InferenceStage
from service.keys import Principal
from service.metrics import ServiceMetrics
from service.modelhost import ModelHost
from service.problems import (
    ProblemError,
    image_problem,
    in_view,
    mixed_modalities,
    no_views,
    not_ready,
    request_timeout,
    storage_unavailable,
    too_many_views,
)
from service.recorder import IdentificationRecorder, pending_identification
from service.render import build_result, view_entry
from service.repository import iso, new_id, utcnow
from service.storage import ImageWriter
from service.uploads import Upload

logger = logging.getLogger(__name__)

_MODALITY_WORDS = {"xray": "x-ray image", "camera": "camera photo"}


def locate(prediction: Prediction, predictor: Predictor, decoded: Decoded) -> dict[str, Any] | None:
    """Where the suspected object is (x-ray bundles): the heat-map box in fractions of the image
    and in pixels of the file as sent, for a decided answer (taxon or look-alike); None when the
    model does not locate."""
    if not prediction.located:
        return None
    confident = prediction.decision.kind in ("taxon", "lookalike")
    if prediction.box is None or not confident or min(decoded.size) < 1:
        # no box for "no wildlife product", nor for an uncertain answer: the heat-map box
        # overlaps the object poorly (docs/xray.md), so it is shown only with a decision
        return {"box": None, "box_px": None, "source": "heat map"}
    config = predictor.bundle.manifest.preprocess
    width, height = decoded.size
    x0, y0, x1, y1 = box_in_image(prediction.box, decoded.size, config)
    fractions = [x0 / width, y0 / height, x1 / width, y1 / height]
    full_w, full_h = decoded.full_size
    return {
        "box": [round(v, 4) for v in fractions],
        "box_px": [
            round(fractions[0] * full_w),
            round(fractions[1] * full_h),
            round(fractions[2] * full_w),
            round(fractions[3] * full_h),
        ],
        "source": "heat map",
    }


def timing_ms(started: float, predictor_started: float, inferred: float) -> dict[str, float]:
    """The answer's ``timing_ms`` from ``time.perf_counter`` marks: decoding (until the model
    was asked), inference, and the whole request so far."""
    return {
        "decode": round((predictor_started - started) * 1000, 2),
        "inference": round((inferred - predictor_started) * 1000, 2),
        "total": round((time.perf_counter() - started) * 1000, 2),
    }


@dataclass(frozen=True)
class IdentifyOptions:
    """The optional form fields of an identification."""

    modality: str | None = None
    top_k: int = 5
    origin_country: str | None = None
    case_ref: str | None = None
    device: DeviceAnswer | None = None  # the phone's own answer, for a case made offline


class IdentificationPipeline:
    """Runs identifications for the routers through the stages it is given."""

    def __init__(
        self,
        *,
        host: ModelHost,
        taxonomy: Taxonomy,
        admission: Admission,
        decode: DecodeStage,
        inference: InferenceStage,
        storage: ImageWriter,
        recorder: IdentificationRecorder,
        metrics: ServiceMetrics,
        request_timeout_s: float,
    ) -> None:
        self._host = host
        self._taxonomy = taxonomy
        self._admission = admission
        self._decode = decode
        self._inference = inference
        self._storage = storage
        self._recorder = recorder
        self._metrics = metrics
        self._timeout_s = request_timeout_s

    def active_predictor(self) -> Predictor:
        """The serving camera predictor (else the only one), or 503 while none is loaded."""
        predictor = self._host.current
        if predictor is None:
            raise not_ready()
        return predictor

    def choose_model(self, modality: str, how: str = "caller") -> Predictor:
        """The active predictor for ``modality``; 422 ``unsupported-modality`` when this
        service holds none (``how``: what said the image is of that modality)."""
        predictor = self._host.current_for(modality)
        if predictor is not None:
            return predictor
        raise self._no_model(modality, how)

    def _no_model(self, modality: str, how: str) -> ProblemError:
        serving = " and ".join(self._host.actives()) or "no"
        known = "you said so" if how == "caller" else f"the file says so: {how}"
        return ProblemError(
            422,
            "unsupported-modality",
            f"This is a {_MODALITY_WORDS.get(modality, modality)} ({known}), but no {modality} "
            f"model is active on this service; it answers {serving} images only. Ask an "
            f"administrator to activate a {modality} model (POST /v1/models/{{version}}/"
            f"activate?modality={modality}), or send a camera photo.",
            title="No model for this modality",
        )

    def check_options(self, options: IdentifyOptions) -> IdentifyOptions:
        """Resolve the origin country; a modality the caller names must have an active model
        (otherwise the modality is resolved once the image is decoded)."""
        origin = options.origin_country
        if origin is not None:
            try:
                origin = self._taxonomy.normalize_country(origin)
            except InvalidCountryError as exc:
                raise ProblemError(
                    422,
                    "validation-error",
                    str(exc),
                    title="Invalid origin country",
                    errors=[{"loc": ["body", "origin_country"], "msg": str(exc), "type": "value"}],
                ) from None
        if options.modality is not None:
            self.choose_model(options.modality)  # refuse before reading the upload
        return replace(options, origin_country=origin)

    async def identify(
        self,
        upload: Upload | bytes,
        options: IdentifyOptions,
        principal: Principal,
        *,
        predictor: Predictor | None = None,
    ) -> dict[str, Any]:
        """Identify one image; returns the stored result (without guidance). Raises
        :class:`ProblemError` for every failure a caller can act on."""
        if isinstance(upload, bytes):
            upload = Upload.from_bytes(upload)
        self.active_predictor()  # 503 before anything else while no model is loaded
        options = self.check_options(options)
        self._admission.check_size(upload.size)
        async with self._admission.admit(principal.key_id):
            try:
                return await asyncio.wait_for(
                    self._identify(upload, options, principal, predictor),
                    timeout=self._timeout_s,
                )
            except TimeoutError:
                self._metrics.rejected.labels(reason="timeout").inc()
                raise request_timeout(self._timeout_s) from None

    async def _decode_view(
        self,
        upload: Upload,
        models: dict[str, Predictor],
        options: IdentifyOptions,
        principal: Principal,
    ) -> tuple[Decoded, Predictor]:
        """Decode one upload in one of the caller's decode slots: the decoded image and the
        model of its modality (422 when the image is unusable or no model serves it)."""
        try:
            async with self._admission.decode_slot(principal.key_id):
                # only now is the upload read: those waiting for a decoder stay in their spool file
                decoded = await self._decode.decode(upload, models, options.modality)
        except ImageError as exc:
            self._metrics.rejected.labels(reason=f"image_{exc.code}").inc()
            raise image_problem(exc) from None
        predictor = models.get(decoded.modality)
        if predictor is None or decoded.array is None:
            self._metrics.rejected.labels(reason="modality").inc()
            raise self._no_model(decoded.modality, decoded.modality_source)
        return decoded, predictor

    async def identify_views(
        self, uploads: Sequence[Upload | bytes], options: IdentifyOptions, principal: Principal
    ) -> dict[str, Any]:
        """Identify one object from up to :data:`~model.fusion.MAX_VIEWS` photos of it: each
        photo is decoded, stored and predicted as a single one would be, then the predictions
        are fused into one answer (:mod:`model.fusion`). Returns the stored result with
        ``views`` (each photo's own answer) and ``fusion``. A photo that cannot be decoded
        refuses the whole request (the problem names it); all photos must be of one modality.
        Each photo holds one admission place, as a batch image does."""
        spooled = [Upload.from_bytes(u) if isinstance(u, bytes) else u for u in uploads]
        if not spooled:
            raise no_views()
        limit = min(MAX_VIEWS, self._admission.limits.max_per_key)
        if len(spooled) > limit:
            raise too_many_views(len(spooled), limit)
        self.active_predictor()
        options = self.check_options(options)
        for upload in spooled:
            self._admission.check_size(upload.size)
        async with contextlib.AsyncExitStack() as places:
            for _upload in spooled:
                await places.enter_async_context(self._admission.admit(principal.key_id))
            try:
                return await asyncio.wait_for(
                    self._identify_views(spooled, options, principal),
                    timeout=self._timeout_s,
                )
            except TimeoutError:
                self._metrics.rejected.labels(reason="timeout").inc()
                raise request_timeout(self._timeout_s) from None

    async def _decode_views(
        self, uploads: Sequence[Upload], options: IdentifyOptions, principal: Principal
    ) -> tuple[list[Decoded], Predictor]:
        """Decode every photo (in the caller's decode slots); all must go to one model."""
        models = self._models(None)
        outcomes = await asyncio.gather(
            *(self._decode_view(u, models, options, principal) for u in uploads),
            return_exceptions=True,
        )
        decoded: list[Decoded] = []
        predictors: list[Predictor] = []
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, ProblemError):
                raise in_view(outcome, position, len(outcomes))
            if isinstance(outcome, BaseException):
                raise outcome
            decoded.append(outcome[0])
            predictors.append(outcome[1])
        if len({id(p) for p in predictors}) > 1:
            self._metrics.rejected.labels(reason="modality").inc()
            raise mixed_modalities([d.modality for d in decoded])
        return decoded, predictors[0]

    async def _identify_views(
        self, uploads: Sequence[Upload], options: IdentifyOptions, principal: Principal
    ) -> dict[str, Any]:
        started = time.perf_counter()
        decoded, predictor = await self._decode_views(uploads, options, principal)
        writes = [(d.image, self._storage.begin(d.image)) for d in decoded]
        committed = False
        try:
            predictor_started = time.perf_counter()
            items = []
            for view in decoded:
                assert view.array is not None  # checked by _decode_view
                items.append(
                    InferenceItem(
                        predictor, view.array, options.origin_country, options.top_k, view.checks
                    )
                )
            # submitted together, the photos run in one micro-batch
            predictions = await asyncio.gather(*(self._inference.predict(i) for i in items))
            fused, fusion = predictor.fuse(
                predictions, origin_country=options.origin_country, top_k=options.top_k
            )
            inferred = time.perf_counter()
            ident_id = new_id()
            created_at = utcnow()
            result = build_result(
                fused,
                predictor,
                self._taxonomy,
                ident_id=ident_id,
                created_at=created_at,
                principal=principal,
                image=decoded[0].image,
                modality=decoded[0].modality,
                modality_source=decoded[0].modality_source,
                origin_country=options.origin_country,
                case_ref=options.case_ref,
                top_k=options.top_k,
            )
            result["views"] = [
                view_entry(
                    position,
                    prediction,
                    view.image,
                    ident_id,
                    used=position in fusion.used,
                    location=locate(prediction, predictor, view),
                )
                for position, (prediction, view) in enumerate(
                    zip(predictions, decoded, strict=True)
                )
            ]
            result["fusion"] = fusion.to_dict()
            if options.device is not None:
                result["device"] = device_record(options.device, result)
            await self._save(result, writes, principal, created_at)
            committed = True
        finally:
            for image, write in writes:
                if committed:
                    self._storage.release(image.sha256)
                else:  # refused, timed out or failed: no file may stay behind for this request
                    await self._storage.discard(image, write)
        result["timing_ms"] = timing_ms(started, predictor_started, inferred)
        return result

    def _models(self, pinned: Predictor | None) -> dict[str, Predictor]:
        """One snapshot of the active models: the model that answers is the one used."""
        models = self._host.actives()
        if pinned is not None:  # a batch or verification that started on this model keeps it
            models.update({m: pinned for m in pinned.bundle.manifest.modalities})
        return models

    async def _identify(
        self,
        upload: Upload,
        options: IdentifyOptions,
        principal: Principal,
        pinned: Predictor | None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        decoded, predictor = await self._decode_view(
            upload, self._models(pinned), options, principal
        )
        image = decoded.image
        write = self._storage.begin(image)  # overlaps inference and rendering
        committed = False
        try:
            result = await self._infer_and_save(
                decoded, write, predictor, options, principal, started
            )
            committed = True
            return result
        finally:
            if committed:
                self._storage.release(image.sha256)
            else:  # refused, timed out or failed: no file may stay behind for this request
                await self._storage.discard(image, write)

    async def _infer_and_save(
        self,
        decoded: Decoded,
        write: asyncio.Future[str],
        predictor: Predictor,
        options: IdentifyOptions,
        principal: Principal,
        started: float,
    ) -> dict[str, Any]:
        predictor_started = time.perf_counter()
        assert decoded.array is not None  # checked by the caller
        item = InferenceItem(
            predictor, decoded.array, options.origin_country, options.top_k, decoded.checks
        )
        prediction = await self._inference.predict(item)
        inferred = time.perf_counter()
        ident_id = new_id()
        created_at = utcnow()
        result = build_result(
            prediction,
            item.predictor,
            self._taxonomy,
            ident_id=ident_id,
            created_at=created_at,
            principal=principal,
            image=decoded.image,
            modality=decoded.modality,
            modality_source=decoded.modality_source,
            location=locate(prediction, predictor, decoded),
            origin_country=options.origin_country,
            case_ref=options.case_ref,
            top_k=options.top_k,
        )
        if options.device is not None:
            result["device"] = device_record(options.device, result)
        await self._save(result, [(decoded.image, write)], principal, created_at)
        result["timing_ms"] = timing_ms(started, predictor_started, inferred)
        return result

    async def _save(
        self,
        result: dict[str, Any],
        images: Sequence[tuple[PreparedImage, asyncio.Future[str]]],
        principal: Principal,
        created_at: datetime,
    ) -> None:
        """Wait for the image writes (durable before the database row refers to them), record
        the identification, count and log its decision."""
        try:
            paths = [await asyncio.shield(write) for _image, write in images]
        except OSError as exc:
            self._metrics.rejected.labels(reason="storage").inc()
            raise storage_unavailable(exc) from None
        first, _write = images[0]
        views = (
            [(image, path) for (image, _w), path in zip(images, paths, strict=True)]
            if len(images) > 1
            else []
        )
        await self._recorder.record(
            pending_identification(result, first, paths[0], principal, created_at, views)
        )
        decision = result["decision"]
        logger.info(
            "identification %s by key %s: %s %s (%.3f, %s, %d photo%s)",
            result["id"],
            principal.key_id or "anonymous",
            decision["kind"],
            decision["label"],
            decision["probability"],
            iso(created_at),
            len(images),
            "" if len(images) == 1 else "s",
        )
        self._metrics.decisions.labels(kind=decision["kind"], label=decision["label"] or "-").inc()
        if result["top_k"]:
            self._metrics.confidence.observe(result["top_k"][0]["probability"])
