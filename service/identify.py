"""The identification path, stage by stage, for one image:

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
import logging
import time
from dataclasses import dataclass
from typing import Any

from model.imageio import ImageError
from model.predictor import Predictor
from model.taxonomy import InvalidCountryError, Taxonomy
from service.admission import Admission
from service.decode import Decoded, DecodeStage
from service.imagestore import PreparedImage
from service.inference import InferenceItem, InferenceStage
from service.keys import Principal
from service.metrics import ServiceMetrics
from service.modelhost import ModelHost
from service.problems import (
    ProblemError,
    image_problem,
    not_ready,
    request_timeout,
    storage_unavailable,
)
from service.recorder import IdentificationRecorder, pending_identification
from service.render import build_result
from service.repository import iso, new_id, utcnow
from service.storage import ImageWriter
from service.uploads import Upload

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentifyOptions:
    """The optional form fields of an identification."""

    modality: str | None = None
    top_k: int = 5
    origin_country: str | None = None
    case_ref: str | None = None


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
        """The serving predictor, or 503 while none is loaded."""
        predictor = self._host.current
        if predictor is None:
            raise not_ready()
        return predictor

    def check_options(self, predictor: Predictor, options: IdentifyOptions) -> IdentifyOptions:
        """Resolve the modality and origin country, refusing what the model cannot answer."""
        modalities = tuple(predictor.bundle.manifest.modalities)
        modality = options.modality or modalities[0]
        if modality not in modalities:
            raise ProblemError(
                422,
                "unsupported-modality",
                f"The active model {predictor.version} was trained on {', '.join(modalities)} "
                f"images only, not {modality}; send a {' or '.join(modalities)} image or ask an "
                "administrator to activate a model trained for this modality.",
                title="Unsupported modality",
            )
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
        return IdentifyOptions(modality, options.top_k, origin, options.case_ref)

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
        predictor = predictor or self.active_predictor()
        options = self.check_options(predictor, options)
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

    async def _identify(
        self,
        upload: Upload,
        options: IdentifyOptions,
        principal: Principal,
        predictor: Predictor,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        stored: list[tuple[PreparedImage, asyncio.Future[str]]] = []

        def start_write(image: PreparedImage) -> None:
            stored.append((image, self._storage.begin(image)))

        committed = False
        try:
            try:
                async with self._admission.decode_slot(principal.key_id):
                    # read only now: uploads waiting for a decoder stay in their spool file
                    data = await asyncio.to_thread(upload.read)
                    decoded = await self._decode.decode(data, predictor, start_write)
            except ImageError as exc:
                self._metrics.rejected.labels(reason=f"image_{exc.code}").inc()
                raise image_problem(exc) from None
            result = await self._infer_and_save(
                decoded, stored[0][1], predictor, options, principal, started
            )
            committed = True
            return result
        finally:
            for image, write in stored:
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
        item = InferenceItem(predictor, decoded.array, options.origin_country, options.top_k)
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
            modality=options.modality or "camera",
            origin_country=options.origin_country,
            case_ref=options.case_ref,
            top_k=options.top_k,
        )
        try:  # durable before the database row refers to it
            image_path = await asyncio.shield(write)
        except OSError as exc:
            self._metrics.rejected.labels(reason="storage").inc()
            raise storage_unavailable(exc) from None
        await self._recorder.record(
            pending_identification(result, decoded.image, image_path, principal, created_at)
        )
        decision = result["decision"]
        logger.info(
            "identification %s by key %s: %s %s (%.3f, %s)",
            result["id"],
            principal.key_id or "anonymous",
            decision["kind"],
            decision["label"],
            decision["probability"],
            iso(created_at),
        )
        self._metrics.decisions.labels(kind=decision["kind"], label=decision["label"] or "-").inc()
        if result["top_k"]:
            self._metrics.confidence.observe(result["top_k"][0]["probability"])
        result["timing_ms"] = {
            "decode": round((predictor_started - started) * 1000, 2),
            "inference": round((inferred - predictor_started) * 1000, 2),
            "total": round((time.perf_counter() - started) * 1000, 2),
        }
        return result
