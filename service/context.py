"""The objects one running service shares between requests, built by the composition root
(:func:`service.compose.build_context`) in the app's lifespan.

Routers reach them through :mod:`service.deps`; components never receive the whole context,
only what they use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from model.taxonomy import Taxonomy
from service.admission import Admission
from service.decode import DecodeStage
from service.guidance import GuidanceBook
from service.heatmaps import HeatmapRenderer
from service.identify import IdentificationPipeline
from service.imagestore import ImageStore
from service.inference import InferenceStage
from service.keys import Principal, touch_key
from service.metrics import ServiceMetrics
from service.modelhost import ModelHost
from service.recorder import IdentificationRecorder
from service.settings import Settings
from service.storage import ImageWriter

logger = logging.getLogger(__name__)

KEY_TOUCH_INTERVAL_S = 60.0


@dataclass
class AppContext:
    """Settings, storage, model host, the stages of the identification path and metrics."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ImageStore
    metrics: ServiceMetrics
    guidance: GuidanceBook
    taxonomy: Taxonomy
    host: ModelHost
    admission: Admission
    decode: DecodeStage
    inference: InferenceStage
    storage: ImageWriter
    recorder: IdentificationRecorder
    pipeline: IdentificationPipeline
    heatmaps: HeatmapRenderer
    _touched: dict[str, float] = field(default_factory=dict)

    async def start(self) -> None:
        """Start the stages' background tasks (on the running loop)."""
        self.inference.start()
        self.storage.start()
        self.recorder.start()

    async def close(self) -> None:
        """Stop the stages in reverse dependency order and release the database."""
        await self.inference.close()
        await self.recorder.close()
        await self.storage.close()
        self.decode.close()
        self.engine.dispose()

    def note_key_use(self, principal: Principal) -> None:
        """Record ``last_used_at`` of a key, at most once a minute per key."""
        if principal.key_id is None:
            return
        now = time.monotonic()
        if now - self._touched.get(principal.key_id, -KEY_TOUCH_INTERVAL_S) < KEY_TOUCH_INTERVAL_S:
            return
        self._touched[principal.key_id] = now
        try:
            with self.sessions() as session:
                touch_key(session, principal.key_id)
        except Exception:  # bookkeeping only; never fail a request for it
            logger.debug("could not record key use", exc_info=True)
