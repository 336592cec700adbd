"""Heat maps of stored identifications: the class activation map drawn over the photo.

A heat map decodes the stored image again, so it is as expensive as an identification and goes
through the same gates: the caller's admission place and decode slot (:mod:`service.admission`)
and the decode workers with their time limit (:mod:`service.decode`). The photo under the map is
capped at :data:`HEATMAP_MAX_SIDE` pixels on its longer side before it leaves the decoder, and
the PNG is cached per stored image, model version and label (least recently used out, within
:data:`CACHE_BYTES`), so a page that shows the map again costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.heatmap import HeatmapError, render_heatmap_overlay
from model.imageio import ImageError
from model.predictor import Predictor
from service.admission import Admission
from service.decode import DecodeStage
from service.modelhost import ModelHost, ModelUnavailableError
from service.problems import ProblemError, image_problem
from service.tables import Identification

logger = logging.getLogger(__name__)

HEATMAP_MAX_SIDE = 1024
"""Longest side of a heat map PNG (and of the photo the decoder hands over for it)."""

CACHE_BYTES = 32 * 1024 * 1024
"""Heat map PNGs kept in memory, in total."""


def _label_index(predictor: Predictor, row: Identification, label: str | None) -> int:
    ids = [lbl.id for lbl in predictor.labels]
    wanted = label or row.label or (row.result.get("top_k") or [{}])[0].get("label")
    if wanted is None:
        return 0
    if wanted not in ids:
        raise ProblemError(
            422,
            "unknown-label",
            f"Label {wanted!r} is not a label of model {predictor.version}; known labels: "
            f"{', '.join(ids)}.",
            title="Unknown label",
        )
    return ids.index(wanted)


class HeatmapCache:
    """PNG bytes by (stored image path, model version, label index), bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        """The cached PNG, or None."""
        with self._lock:
            png = self._entries.get(key)
            if png is not None:
                self._entries.move_to_end(key)
            return png

    def put(self, key: tuple[str, str, int], png: bytes) -> None:
        """Keep ``png``, dropping the least recently used beyond the byte budget."""
        if len(png) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = png
            self._bytes += len(png)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)


class HeatmapRenderer:
    """Draws heat maps through admission and the decode stage, with a cache."""

    def __init__(
        self,
        *,
        host: ModelHost,
        admission: Admission,
        decode: DecodeStage,
        cache: HeatmapCache | None = None,
    ) -> None:
        self._host = host
        self._admission = admission
        self._decode = decode
        self.cache = cache or HeatmapCache()

    async def render(
        self, row: Identification, image_path: Path, label: str | None, client: str | None
    ) -> bytes:
        """PNG of the photo with the activation map of ``label`` (default: the decided label,
        else the top-1 label), computed with the model that made the identification (the
        active one, or an earlier one loaded again; ``410 model-unavailable`` when it is
        gone). ``client`` is the caller's key id (for its share of the decoders)."""
        try:
            predictor = await self._host.predictor_for(row.model_version)
        except ModelUnavailableError as exc:
            raise ProblemError(
                410,
                "model-unavailable",
                f"This identification was made by model {row.model_version}, which can no "
                f"longer be loaded ({exc}); heat maps are drawn by the model that made the "
                "identification. Identify the image again for a heat map from the active model.",
                title="Model no longer available",
            ) from None
        index = _label_index(predictor, row, label)
        # by image, not by identification: the photos of a multi-view identification each have
        # their own map, and one photo identified twice shares it
        key = (str(image_path), predictor.version, index)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        config = predictor.bundle.manifest.preprocess
        async with self._admission.admit(client):
            try:
                async with self._admission.decode_slot(client):
                    source = await self._decode.heatmap_source(image_path, config, HEATMAP_MAX_SIDE)
            except ImageError as exc:
                raise image_problem(exc) from None
        try:
            png = await asyncio.to_thread(self._draw, predictor, source.array, source.photo, index)
        except HeatmapError as exc:
            raise ProblemError(
                422, "corrupt-image", f"Cannot draw the heat map: {exc}", title="No heat map"
            ) from None
        self.cache.put(key, png)
        return png

    @staticmethod
    def _draw(
        predictor: Predictor, array: npt.NDArray[np.float32], photo: Image.Image, index: int
    ) -> bytes:
        cam = predictor.heatmap(array, index)
        return render_heatmap_overlay(
            photo, cam, config=predictor.preprocess, max_side=HEATMAP_MAX_SIDE
        )
