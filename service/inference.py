"""The inference stage: a LitServe-shaped API over the model's predictor, run by the micro-batcher.

:class:`PredictorAPI` has the five methods of a LitServe ``LitAPI`` (``decode_request``,
``batch``, ``predict``, ``unbatch``, ``encode_response``, plus ``setup``), so the same class runs
inside this service (driven by :class:`InferenceStage`) and under LitServe in the benchmark
(``bench/servers/litserve_service_api.py``). In the service a request is an
:class:`InferenceItem`: an image the decode stage has already turned into the model input, the
predictor it started with (requests in flight finish on the model they began with, even across
a hot swap), and the options of the decision. A batch groups its items by predictor; each group
is one ``predict_arrays`` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.checks import ImageChecks
from model.predictor import Prediction, Predictor
from service.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from service.metrics import ServiceMetrics
from service.problems import overloaded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceItem:
    """One preprocessed image on its way through the micro-batcher."""

    predictor: Predictor
    array: npt.NDArray[np.float32]
    origin_country: str | None
    top_k: int
    checks: ImageChecks | None = None


@dataclass(frozen=True)
class InferenceBatch:
    """Items grouped by the predictor they run on: ``(predictor, positions, stacked arrays)``."""

    size: int
    groups: tuple[tuple[Predictor, tuple[int, ...], npt.NDArray[np.float32]], ...]
    origin_countries: tuple[str | None, ...]
    top_k: tuple[int, ...]
    checks: tuple[ImageChecks | None, ...] = ()


class PredictorAPI:
    """LitServe-shaped inference over :class:`~model.predictor.Predictor` (see the module
    docstring). ``predict(batch(items))`` followed by ``unbatch`` gives one
    :class:`~model.predictor.Prediction` per item, in order."""

    def setup(self, device: str) -> None:
        """Nothing to load: each item carries its predictor (LitServe calls this per worker)."""
        logger.debug("predictor API ready on %s", device)

    def decode_request(self, request: InferenceItem) -> InferenceItem:
        """The service's requests are already decoded by the decode stage."""
        return request

    def batch(self, inputs: Sequence[InferenceItem]) -> InferenceBatch:
        """Group ``inputs`` by predictor and stack each group's arrays."""
        positions: dict[int, list[int]] = {}
        for position, item in enumerate(inputs):
            positions.setdefault(id(item.predictor), []).append(position)
        groups = tuple(
            (
                inputs[members[0]].predictor,
                tuple(members),
                np.stack([inputs[p].array for p in members]),
            )
            for members in positions.values()
        )
        return InferenceBatch(
            size=len(inputs),
            groups=groups,
            origin_countries=tuple(item.origin_country for item in inputs),
            top_k=tuple(item.top_k for item in inputs),
            checks=tuple(item.checks for item in inputs),
        )

    def predict(self, x: InferenceBatch) -> list[Prediction]:
        """One ``predict_arrays`` call per predictor; predictions in the order of the items."""
        results: list[Prediction | None] = [None] * x.size
        for predictor, members, arrays in x.groups:
            predictions = predictor.predict_arrays(
                arrays,
                origin_countries=[x.origin_countries[p] for p in members],
                top_k=max(x.top_k[p] for p in members),
                checks=[x.checks[p] for p in members] if x.checks else None,
            )
            for position, prediction in zip(members, predictions, strict=True):
                results[position] = prediction
        missing = [p for p, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"no prediction for items {missing}")
        return [r for r in results if r is not None]

    def unbatch(self, output: list[Prediction]) -> list[Prediction]:
        """Predictions are already one per item."""
        return output

    def encode_response(self, output: Prediction) -> Prediction:
        """The service renders the answer itself (:mod:`service.render`)."""
        return output

    def run_batch(self, items: Sequence[InferenceItem]) -> list[Prediction]:
        """The whole path for a micro-batch, as LitServe would call it."""
        decoded = [self.decode_request(item) for item in items]
        outputs = self.unbatch(self.predict(self.batch(decoded)))
        return [self.encode_response(output) for output in outputs]


def run_batch(items: Sequence[InferenceItem]) -> list[Prediction]:
    """Run a micro-batch: one predictor call per predictor in it (normally one)."""
    return PredictorAPI().run_batch(items)


class InferenceStage:
    """Micro-batches :class:`InferenceItem` s through a :class:`PredictorAPI`.

    ``incoming`` tells the batcher how many images are still decoding (they will join the
    batch soon); a full queue is a 503 ``overloaded`` problem."""

    def __init__(
        self,
        api: PredictorAPI,
        *,
        max_size: int,
        max_wait_s: float,
        queue_max: int,
        incoming: Callable[[], int],
        metrics: ServiceMetrics,
    ) -> None:
        self.api = api
        self._metrics = metrics
        self.batcher: MicroBatcher[InferenceItem, Prediction] = MicroBatcher(
            api.run_batch,
            max_size=max_size,
            max_wait_s=max_wait_s,
            queue_max=queue_max,
            metrics=metrics,
            incoming=incoming,
        )

    def start(self) -> None:
        """Start the batcher on the running loop."""
        self.batcher.start()

    async def close(self) -> None:
        """Stop the batcher; queued items fail with 503."""
        await self.batcher.close()

    async def predict(self, item: InferenceItem) -> Prediction:
        """The prediction for one item, batched with whatever else is ready."""
        try:
            return await self.batcher.submit(item)
        except QueueFullError as exc:
            self._metrics.rejected.labels(reason="queue_full").inc()
            raise overloaded(str(exc)) from None
        except BatcherClosedError as exc:
            raise overloaded(str(exc)) from None
