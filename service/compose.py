"""The composition root: builds the service's components in dependency order.

    settings, metrics
      -> database (engine, sessions), taxonomy, guidance, image store
      -> model host (initial predictor)
      -> admission
      -> decode stage (workers)
      -> inference stage (micro-batcher; its ``incoming`` signal is the decode stage's count)
      -> storage stage (group fsync; asks the database whether a row uses an image)
      -> recording stage (group commit)
      -> identification pipeline, heat maps
      -> AppContext (what the routers reach through ``service.deps``)

Each component receives the parts it uses; nothing holds the whole context, and every
reference points to something built before it, so there are no cycles and no late binding.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from model.predictor import Predictor
from model.taxonomy import default_taxonomy
from service.admission import Admission, AdmissionLimits
from service.context import AppContext
from service.database import (
    make_engine,
    make_sessionmaker,
    migrate,
    private_sqlite_files,
    sqlite_dir,
)
from service.decode import DecodeLimits, DecodeStage
from service.decodeworkers import DecodeWorkers
from service.guidance import GuidanceBook
from service.heatmaps import HeatmapRenderer
from service.identify import IdentificationPipeline
from service.imagestore import ImageStore, private_dir
from service.inference import InferenceStage, PredictorAPI
from service.metrics import ServiceMetrics
from service.modelhost import ModelHost, ModelLoadError
from service.recorder import IdentificationRecorder
from service.repository import ACTIVE_MODEL_KEY, active_model_key, get_state
from service.settings import Settings
from service.storage import ImageWriter
from service.tables import StoredImage

logger = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start (no usable bundle, database unreachable...)."""


def initial_predictor(
    host: ModelHost, settings: Settings, sessions: sessionmaker[Session]
) -> Predictor:
    """The persisted active version when it still loads, else the configured bundle."""
    with sessions() as session:
        persisted = get_state(session, ACTIVE_MODEL_KEY)
    if persisted:
        folder = host.weights_dir / persisted
        if folder.is_dir():
            try:
                predictor = host.load(folder)
                logger.info("serving the persisted active model %s", predictor.version)
                return predictor
            except ModelLoadError as exc:
                logger.error(
                    "persisted model %s failed (%s); using %s", persisted, exc, settings.bundle_dir
                )
        else:
            logger.warning(
                "persisted model folder %s is gone; using %s", folder, settings.bundle_dir
            )
    try:
        return host.load(settings.bundle_dir)
    except ModelLoadError as exc:
        raise StartupError(
            f"{exc}. Point --bundle / CITES_BUNDLE_DIR at a bundle folder (with manifest.json)."
        ) from exc


def initial_xray_predictor(
    host: ModelHost, settings: Settings, sessions: sessionmaker[Session]
) -> Predictor | None:
    """The persisted x-ray model when it still loads, else ``CITES_XRAY_BUNDLE`` under the
    weights directory when present; None (camera only) when neither serves. A broken x-ray
    bundle never stops the service: officers' photos still get answers."""
    with sessions() as session:
        persisted = get_state(session, active_model_key("xray"))
    candidates = [c for c in (persisted, settings.xray_bundle) if c]
    for name in dict.fromkeys(candidates):
        folder = host.weights_dir / name
        if not (folder / "manifest.json").is_file():
            logger.info("no x-ray bundle at %s", folder)
            continue
        try:
            predictor = host.load(folder)
        except ModelLoadError as exc:
            logger.error("x-ray bundle %s does not load: %s", folder, exc)
            continue
        if "xray" not in predictor.bundle.manifest.modalities:
            logger.error("bundle %s is not an x-ray bundle; not serving it for x-ray", folder)
            continue
        logger.info("serving x-ray model %s", predictor.version)
        return predictor
    logger.info("no x-ray model: x-ray images get 422 no-model-for-modality")
    return None


class ImageRowCheck:
    """``check(sha256)``: True when the image has a database row."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def __call__(self, sha256: str) -> bool:
        """Whether an image row with ``sha256`` exists."""
        with self._sessions() as session:
            return session.get(StoredImage, sha256) is not None


def build_context(settings: Settings, metrics: ServiceMetrics) -> AppContext:
    """Open storage, load the model and build the stages (blocking; called from the lifespan)."""
    url = settings.resolved_database_url
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_dir(settings.data_dir)
    folder = sqlite_dir(url)
    if folder is not None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(url)
    migrate(engine)
    private_sqlite_files(url)
    sessions = make_sessionmaker(engine)
    taxonomy = default_taxonomy()
    store = ImageStore(settings.images_dir)
    host = ModelHost(
        settings.resolved_weights_dir,
        taxonomy=taxonomy,
        threads=settings.onnx_threads,
        batch_threads=settings.onnx_batch_threads,
        precision=settings.precision,
        warmup_batch=settings.batch_max_size,
    )
    host.set_initial(initial_predictor(host, settings, sessions))
    xray = initial_xray_predictor(host, settings, sessions)
    if xray is not None:  # a dedicated x-ray bundle wins over a multi-modality camera one
        host.set_initial(xray, "xray")
    admission = Admission(
        AdmissionLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_in_progress=settings.queue_max,
            max_per_key=settings.resolved_max_requests_per_key,
            decode_slots_per_key=settings.resolved_decode_slots_per_key,
        ),
        metrics,
    )
    memory = settings.decode_memory_mb
    decode = DecodeStage(
        DecodeWorkers(
            settings.decode_workers,
            timeout_s=settings.decode_timeout_s,
            memory_limit_bytes=memory * 1024 * 1024 if memory is not None else None,
        ),
        DecodeLimits(max_pixels=settings.max_pixels, keep_gps=settings.keep_gps),
    )
    decode.start()
    inference = InferenceStage(
        PredictorAPI(),
        max_size=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000.0,
        queue_max=settings.queue_max,
        incoming=decode.decoding,
        metrics=metrics,
    )
    storage = ImageWriter(store, is_recorded=ImageRowCheck(sessions), queue_max=settings.queue_max)
    recorder = IdentificationRecorder(sessions, queue_max=settings.queue_max, metrics=metrics)
    pipeline = IdentificationPipeline(
        host=host,
        taxonomy=taxonomy,
        admission=admission,
        decode=decode,
        inference=inference,
        storage=storage,
        recorder=recorder,
        metrics=metrics,
        request_timeout_s=settings.request_timeout_s,
    )
    heatmaps = HeatmapRenderer(host=host, admission=admission, decode=decode)
    current = host.current
    if current is not None:
        metrics.set_active_model(current.version)
    return AppContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        metrics=metrics,
        guidance=GuidanceBook.load(),
        taxonomy=taxonomy,
        host=host,
        admission=admission,
        decode=decode,
        inference=inference,
        storage=storage,
        recorder=recorder,
        pipeline=pipeline,
        heatmaps=heatmaps,
    )
