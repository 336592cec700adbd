"""Heat maps of stored identifications: the class activation map drawn over the photo."""

from __future__ import annotations

import asyncio

from model.heatmap import HeatmapError, render_heatmap_overlay
from model.imageio import ImageError, decode_image
from model.predictor import Predictor
from service.context import AppContext
from service.modelhost import ModelUnavailableError
from service.problems import ProblemError
from service.tables import Identification, StoredImage


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


def _render(predictor: Predictor, data: bytes, index: int, max_pixels: int) -> bytes:
    cam = predictor.heatmap(predictor.preprocess_bytes(data, max_pixels=max_pixels), index)
    photo = decode_image(data, max_pixels=max_pixels).image
    return render_heatmap_overlay(photo, cam, config=predictor.preprocess)


async def render_heatmap_png(
    context: AppContext, row: Identification, image: StoredImage, label: str | None
) -> bytes:
    """PNG of the photo with the activation map of ``label`` (default: the decided label,
    else the top-1 label), computed with the model that made the identification (the active
    one, or an earlier one loaded again; ``410 model-unavailable`` when it is gone)."""
    try:
        predictor = await context.host.predictor_for(row.model_version)
    except ModelUnavailableError as exc:
        raise ProblemError(
            410,
            "model-unavailable",
            f"This identification was made by model {row.model_version}, which can no longer "
            f"be loaded ({exc}); heat maps are drawn by the model that made the "
            "identification. Identify the image again for a heat map from the active model.",
            title="Model no longer available",
        ) from None
    index = _label_index(predictor, row, label)
    data = await asyncio.to_thread(context.store.read, image.path)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            context.decode_pool, _render, predictor, data, index, context.settings.max_pixels
        )
    except (ImageError, HeatmapError) as exc:
        raise ProblemError(
            422, "corrupt-image", f"Cannot draw the heat map: {exc}", title="No heat map"
        ) from None
