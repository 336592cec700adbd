"""The objects one running service shares between requests (built in the app's lifespan)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from model.taxonomy import Taxonomy
from service.guidance import GuidanceBook
from service.imagestore import ImageStore
from service.keys import Principal, touch_key
from service.metrics import ServiceMetrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.batcher import MicroBatcher
    from service.identify import Identifier
    from service.modelhost import ModelHost
    from service.recorder import IdentificationRecorder

logger = logging.getLogger(__name__)

KEY_TOUCH_INTERVAL_S = 60.0


@dataclass
class AppContext:
    """Settings, storage, model host, batcher, recorder and metrics of one app."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ImageStore
    metrics: ServiceMetrics
    guidance: GuidanceBook
    taxonomy: Taxonomy
    host: ModelHost
    batcher: MicroBatcher[Any, Any]
    recorder: IdentificationRecorder
    decode_pool: ThreadPoolExecutor
    identifier: Identifier = field(init=False)
    _touched: dict[str, float] = field(default_factory=dict)
    _labels_cache: dict[str, frozenset[str]] = field(default_factory=dict)

    def known_labels(self, version: str) -> frozenset[str]:
        """Label ids of model ``version`` (the active one, or a bundle in the weights dir)."""
        current = self.host.current
        if current is not None and current.version == version:
            return frozenset(label.id for label in current.bundle.labels)
        if version not in self._labels_cache:
            from model.bundle import LABELS_FILE
            from model.labels import LabelsError, read_labels
            from service.modelhost import ModelNotFoundError

            try:
                labels = read_labels(self.host.find(version) / LABELS_FILE)
                self._labels_cache[version] = frozenset(label.id for label in labels)
            except (ModelNotFoundError, LabelsError, OSError):
                return frozenset()
        return self._labels_cache[version]

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
