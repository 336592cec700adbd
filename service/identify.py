"""Identification pipeline: upload -> decode (pool) -> micro-batch -> decision -> store -> answer.

The durable image write starts as soon as the stored bytes are known (after decode: GPS removed,
sha256 computed) and runs in a thread while the model answers; it is awaited before the database
row is written, so the file is always on disk before a row refers to it. A request that fails
after the write started (503, 504, inference error, 507) deletes the file again unless a database
row or another request in this process still needs the same content (the store is
content-addressed, so identical uploads share one file). A process killed between the write and
the commit can leave an unreferenced file behind, never a row without its file.

Routers call :class:`Identifier`; it holds no HTTP code beyond raising :class:`ProblemError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.concurrency import run_in_threadpool

from model.checks import ImageChecks
from model.imageio import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from model.predictor import Prediction, Predictor
from model.taxonomy import InvalidCountryError
from service.batcher import BatcherClosedError, QueueFullError
from service.context import AppContext
from service.imagestore import PreparedImage, jpeg_segments_readable, prepare_image
from service.keys import Principal
from service.problems import ProblemError
from service.recorder import PendingIdentification
from service.render import build_result
from service.repository import NewIdentification, iso, new_id, utcnow
from service.tables import StoredImage

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class IdentifyOptions:
    """The optional form fields of an identification."""

    modality: str | None = None
    top_k: int = 5
    origin_country: str | None = None
    case_ref: str | None = None


@dataclass(frozen=True)
class InferenceItem:
    """One preprocessed image on its way through the micro-batcher."""

    predictor: Predictor
    array: npt.NDArray[np.float32]
    origin_country: str | None
    top_k: int
    checks: ImageChecks | None = None


def run_batch(items: Sequence[InferenceItem]) -> list[Prediction]:
    """Run a micro-batch: one predictor call per predictor in it (normally one)."""
    results: list[Prediction | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(id(item.predictor), []).append(position)
    for positions in groups.values():
        predictor = items[positions[0]].predictor
        arrays = np.stack([items[p].array for p in positions])
        predictions = predictor.predict_arrays(
            arrays,
            origin_countries=[items[p].origin_country for p in positions],
            top_k=max(items[p].top_k for p in positions),
            checks=[items[p].checks for p in positions],
        )
        for position, prediction in zip(positions, predictions, strict=True):
            results[position] = prediction
    return [r for r in results if r is not None]


def image_problem(exc: ImageError) -> ProblemError:
    """The problem for an unusable image."""
    if isinstance(exc, ImageTooLargeError):
        return ProblemError(413, "too-many-pixels", str(exc), title="Image has too many pixels")
    slug, title = {
        EmptyImageError: ("empty-image", "Empty image"),
        UnsupportedImageError: ("unsupported-image", "Unsupported image"),
        CorruptImageError: ("corrupt-image", "Corrupt image"),
    }.get(type(exc), ("unsupported-image", "Unusable image"))
    return ProblemError(422, slug, str(exc), title=title)


def upload_too_large(size: int | None, limit: int) -> ProblemError:
    """The problem for an upload over the byte limit."""
    got = f"The upload is {size} bytes; " if size is not None else "The upload is too large; "
    return ProblemError(
        413,
        "image-too-large",
        f"{got}the limit is {limit} bytes (CITES_MAX_UPLOAD_BYTES). Send a smaller image, "
        "e.g. resized to 2000 px on the longer side.",
        title="Image too large",
    )


def overloaded(reason: str) -> ProblemError:
    """503 with Retry-After."""
    return ProblemError(
        503,
        "overloaded",
        f"The service is busy ({reason}); retry in {RETRY_AFTER_S} s.",
        title="Service overloaded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def storage_unavailable(exc: OSError) -> ProblemError:
    """507 when the image store cannot be written (disk full, read-only, permissions)."""
    logger.error("cannot write to the image store: %s", exc)
    return ProblemError(
        507,
        "storage-unavailable",
        "The image store cannot be written right now (disk full or read-only); nothing was "
        "stored. Retry later; an operator must check the data directory.",
        title="Storage unavailable",
    )


@dataclass(frozen=True)
class _Prepared:
    array: npt.NDArray[np.float32]
    checks: ImageChecks
    image: PreparedImage


class Identifier:
    """Runs identifications for the routers."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self._in_flight = 0
        self._decoding = 0  # requests decoding now, i.e. about to reach the micro-batcher
        # sha256 -> requests of this process whose image write started and that have not yet
        # committed or given up; guarded by _store_lock together with the discard decision.
        self._writers: dict[str, int] = {}
        self._store_lock = threading.Lock()

    def decoding(self) -> int:
        """Images being decoded now: the micro-batcher's ``incoming`` signal, so that it waits
        (at most its max wait) for them instead of running a batch that they could join."""
        return self._decoding

    def active_predictor(self) -> Predictor:
        """The serving predictor, or 503 while none is loaded."""
        predictor = self.context.host.current
        if predictor is None:
            raise ProblemError(
                503,
                "not-ready",
                "No model is loaded yet; retry shortly.",
                title="Not ready",
                headers={"Retry-After": "2"},
            )
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
                origin = self.context.taxonomy.normalize_country(origin)
            except InvalidCountryError as exc:
                raise ProblemError(
                    422,
                    "validation-error",
                    str(exc),
                    title="Invalid origin country",
                    errors=[{"loc": ["body", "origin_country"], "msg": str(exc), "type": "value"}],
                ) from None
        return IdentifyOptions(modality, options.top_k, origin, options.case_ref)

    def _decode(
        self, data: bytes, predictor: Predictor
    ) -> tuple[npt.NDArray[np.float32], ImageChecks]:
        return predictor.prepare_input(data, max_pixels=self.context.settings.max_pixels)

    def _prepare(self, data: bytes, predictor: Predictor) -> _Prepared:
        array, checks = self._decode(data, predictor)
        image = prepare_image(data, keep_gps=self.context.settings.keep_gps)
        return _Prepared(array, checks, image)

    def _prepare_early(self, data: bytes) -> PreparedImage | None:
        """The stored bytes of a JPEG before decoding; None when that would need more than a
        byte-level edit (unparsable segments mean a re-encode, which must wait for the decode's
        pixel limit) or its headers are unreadable (decoding then reports what is wrong)."""
        if not jpeg_segments_readable(data):
            return None
        try:
            return prepare_image(data, keep_gps=self.context.settings.keep_gps)
        except ValueError:
            return None

    async def identify(
        self,
        data: bytes,
        options: IdentifyOptions,
        principal: Principal,
        *,
        predictor: Predictor | None = None,
    ) -> dict[str, Any]:
        """Identify one image; returns the stored result (without guidance). Raises
        :class:`ProblemError` for every failure a caller can act on."""
        settings = self.context.settings
        predictor = predictor or self.active_predictor()
        options = self.check_options(predictor, options)
        if len(data) > settings.max_upload_bytes:
            self.context.metrics.rejected.labels(reason="too_large").inc()
            raise upload_too_large(len(data), settings.max_upload_bytes)
        if self._in_flight >= settings.queue_max:
            self.context.metrics.rejected.labels(reason="overloaded").inc()
            raise overloaded(f"{self._in_flight} images in progress")
        self._in_flight += 1
        try:
            return await asyncio.wait_for(
                self._identify(data, options, principal, predictor),
                timeout=settings.request_timeout_s,
            )
        except TimeoutError:
            self.context.metrics.rejected.labels(reason="timeout").inc()
            raise ProblemError(
                504,
                "timeout",
                f"The identification took longer than {settings.request_timeout_s:g} s "
                "(CITES_REQUEST_TIMEOUT_S); the service is busy or the image is very large. "
                "Retry later.",
                title="Timeout",
            ) from None
        finally:
            self._in_flight -= 1

    async def _identify(
        self,
        data: bytes,
        options: IdentifyOptions,
        principal: Principal,
        predictor: Predictor,
    ) -> dict[str, Any]:
        context = self.context
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        image: PreparedImage | None = None
        write: asyncio.Future[str] | None = None
        committed = False
        self._decoding += 1
        decoding = True
        try:
            if data[:2] == b"\xff\xd8":  # JPEG: GPS removal is byte-level and cheap, so the
                # durable write can start now and overlap decoding as well as inference
                image = await loop.run_in_executor(context.decode_pool, self._prepare_early, data)
                if image is not None:
                    write = self._start_write(image)
            try:
                if image is None:
                    prepared = await loop.run_in_executor(
                        context.decode_pool, self._prepare, data, predictor
                    )
                    image = prepared.image
                    write = self._start_write(image)
                else:
                    array, checks = await loop.run_in_executor(
                        context.decode_pool, self._decode, data, predictor
                    )
                    prepared = _Prepared(array, checks, image)
            except ImageError as exc:
                context.metrics.rejected.labels(reason=f"image_{exc.code}").inc()
                raise image_problem(exc) from None
            if write is None:  # pragma: no cover - both paths above start the write
                raise RuntimeError("the image write was not started")
            decoded = time.perf_counter()
            self._decoding -= 1  # no await until the batcher has the item
            decoding = False
            result = await self._infer_and_save(
                prepared, write, options, principal, predictor, started, decoded
            )
            committed = True
        finally:
            if decoding:
                self._decoding -= 1
            if write is not None and image is not None:
                if committed:
                    with self._store_lock:
                        self._release(image.sha256)
                else:  # refused, timed out or failed: no file may stay behind for this request
                    await self._discard(image, write)
        return result

    async def _infer_and_save(
        self,
        prepared: _Prepared,
        write: asyncio.Future[str],
        options: IdentifyOptions,
        principal: Principal,
        predictor: Predictor,
        started: float,
        decoded: float,
    ) -> dict[str, Any]:
        context = self.context
        item = InferenceItem(
            predictor, prepared.array, options.origin_country, options.top_k, prepared.checks
        )
        try:
            prediction: Prediction = await context.batcher.submit(item)
        except QueueFullError as exc:
            context.metrics.rejected.labels(reason="queue_full").inc()
            raise overloaded(str(exc)) from None
        except BatcherClosedError as exc:
            raise overloaded(str(exc)) from None
        inferred = time.perf_counter()
        ident_id = new_id()
        created_at = utcnow()
        result = build_result(
            prediction,
            predictor,
            context.taxonomy,
            ident_id=ident_id,
            created_at=created_at,
            principal=principal,
            image=prepared.image,
            modality=options.modality or "camera",
            origin_country=options.origin_country,
            case_ref=options.case_ref,
            top_k=options.top_k,
        )
        try:  # durable before the database row refers to it
            await asyncio.shield(write)
        except OSError as exc:
            context.metrics.rejected.labels(reason="storage").inc()
            raise storage_unavailable(exc) from None
        await self._save(result, prepared.image, principal, created_at)
        decision = result["decision"]
        context.metrics.decisions.labels(
            kind=decision["kind"], label=decision["label"] or "-"
        ).inc()
        if result["top_k"]:
            context.metrics.confidence.observe(result["top_k"][0]["probability"])
        result["timing_ms"] = {
            "decode": round((decoded - started) * 1000, 2),
            "inference": round((inferred - decoded) * 1000, 2),
            "total": round((time.perf_counter() - started) * 1000, 2),
        }
        return result

    def _start_write(self, image: PreparedImage) -> asyncio.Future[str]:
        """Start storing ``image`` durably in a thread; the caller must later call
        :meth:`_release` (committed) or :meth:`_discard` (failed) exactly once."""
        with self._store_lock:
            self._writers[image.sha256] = self._writers.get(image.sha256, 0) + 1
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, self.context.store.put, image)

    def _release(self, sha256: str) -> bool:
        """Forget one writer of ``sha256``; True when no other request of this process needs it.
        Call with ``_store_lock`` held."""
        left = self._writers.get(sha256, 0) - 1
        if left > 0:
            self._writers[sha256] = left
            return False
        self._writers.pop(sha256, None)
        return True

    async def _discard(self, image: PreparedImage, write: asyncio.Future[str]) -> None:
        """After a failed request: wait for its write to end, then delete the file unless a
        database row or another in-flight request of this process uses the same content."""
        # An error means nothing complete was written; cancelled means the loop is stopping.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(write)
        await run_in_threadpool(self._discard_file, image)

    def _discard_file(self, image: PreparedImage) -> None:
        with self._store_lock:
            if not self._release(image.sha256):
                return
            try:
                with self.context.sessions() as session:
                    if session.get(StoredImage, image.sha256) is not None:
                        return
            except Exception:  # cannot tell whether a row needs it: keep the file
                logger.exception("could not check the database for image %s", image.sha256)
                return
            store = self.context.store
            path = store.path_of(store.relative_path(image.sha256, image.ext))
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove the image of a failed request %s: %s", path, exc)

    async def _save(
        self,
        result: dict[str, Any],
        image: PreparedImage,
        principal: Principal,
        created_at: datetime,
    ) -> None:
        """Commit the image row (if new) and the identification row, in a group commit with
        the identifications that are ready at the same time."""
        decision = result["decision"]
        await self.context.recorder.record(
            PendingIdentification(
                image=image,
                image_path=self.context.store.relative_path(image.sha256, image.ext),
                identification=NewIdentification(
                    principal=principal,
                    image_sha256=image.sha256,
                    model_version=result["model_version"],
                    modality=result["modality"],
                    origin_country=result["origin_country"],
                    case_ref=result["case_ref"],
                    decision_kind=decision["kind"],
                    label=decision["label"],
                    taxon=(decision["taxon"] or {}).get("id"),
                    probability=float(decision["probability"]),
                    rule=decision["rule"],
                    result=result,
                ),
                ident_id=result["id"],
                created_at=created_at,
            )
        )
        logger.info(
            "identification %s by key %s: %s %s (%.3f, %s)",
            result["id"],
            principal.key_id or "anonymous",
            decision["kind"],
            decision["label"],
            decision["probability"],
            iso(created_at),
        )
