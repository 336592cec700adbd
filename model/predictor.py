"""The predictor: an ONNX Runtime session over a verified bundle, from pixels to decisions.

``predict_arrays`` is the real path (``predict_one`` and ``predict_bytes`` call it): a batch of
preprocessed images (N,3,S,S) runs through the session; the logits are divided by the bundle's
temperature and soft-maxed into calibrated probabilities; the pooled features give the
out-of-domain score (when the bundle has an OOD model); :func:`model.decision.decide` turns
each probability vector into a decision. Sessions are thread-safe, so one predictor serves
concurrent callers. No torch, no HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from model.bundle import Bundle, BundleError, Precision, load_bundle
from model.checks import ImageChecks, check_array, prepare_input
from model.decision import Decision, decide, scanner_image, unusable_image
from model.fusion import DEFAULT_OOD_FUSION, FusedDecision, ViewResult, fuse_views
from model.heatmap import heatmap_box
from model.labels import Label
from model.preprocess import DEFAULT_MAX_PIXELS, ImageError, PreprocessConfig, preprocess_bytes
from model.taxonomy import Taxonomy, default_taxonomy

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features", "cam")
DEFAULT_MAX_BATCH = 64

FloatArray = npt.NDArray[np.float32]


class PredictorError(ValueError):
    """Input the predictor cannot use (shape, dtype, counts); the message says how to fix it."""


@dataclass(frozen=True)
class LabelScore:
    """One label and its calibrated probability."""

    label: Label
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the label's fields and the probability."""
        return {**self.label.to_dict(), "probability": round(self.probability, 6)}


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result for one image.

    Attributes:
        probabilities: calibrated probabilities over all labels, shape (C,).
        top: the ``top_k`` most probable labels, most probable first; empty when the image
            checks refused the image (then no label may be shown as a suggestion).
        decision: the roll-up decision (see :mod:`model.decision`).
        ood_score: out-of-domain score, or None when the bundle has no OOD model.
        features: pooled backbone features (F,), only when asked for.
        checks: the image checks made before the model (see :mod:`model.checks`).
        box: for bundles that locate (x-ray): where the top label's activation map points, as
            (left, top, right, bottom) fractions of the model input; None when the top label is
            "not wildlife" or the map is flat. ``located`` says the bundle locates at all.
    """

    probabilities: FloatArray
    top: list[LabelScore]
    decision: Decision
    ood_score: float | None
    features: FloatArray | None = None
    checks: ImageChecks | None = None
    box: tuple[float, float, float, float] | None = None
    located: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the full probability vector and features)."""
        result: dict[str, Any] = {
            "decision": self.decision.to_dict(),
            "top": [score.to_dict() for score in self.top],
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
        }
        if self.located:
            result["box"] = None if self.box is None else [round(v, 4) for v in self.box]
        return result


def softmax(
    logits: npt.ArrayLike, temperature: float = 1.0, *, dtype: npt.DTypeLike = np.float32
) -> npt.NDArray[np.floating[Any]]:
    """Row-wise softmax of ``logits / temperature``, computed stably in float64.

    The result is ``dtype``: float32 for serving (the default), float64 where calibration
    fits a temperature on many small probabilities.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    result: npt.NDArray[np.floating[Any]] = (exp / exp.sum(axis=-1, keepdims=True)).astype(dtype)
    return result


def session_options(threads: int | None, *, spin: bool = True) -> ort.SessionOptions:
    """ONNX Runtime options of a predictor: ``threads`` intra-op threads (None: all cores), one
    inter-op thread, every graph optimisation. ``spin``: idle intra-op threads spin-wait for the
    next operator instead of sleeping. That is faster when the session has the cores to itself,
    as in batch prediction and evaluation; the service turns it off, because there the spinning
    threads take the cores from the decode threads (figures in ``docs/benchmarks.md``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0 if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class Predictor:
    """Runs a bundle: calibrated probabilities, OOD score and decision for each image.

    Args:
        bundle: a loaded :class:`~model.bundle.Bundle` or the path of a bundle folder.
        taxonomy: taxonomy for the roll-up and appendices (default: the packaged one).
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
        precision: ``fp32``, ``int8`` or ``auto`` (INT8 when the bundle has it).
        max_batch: larger inputs are run in chunks of this many images.
        spin: let idle ONNX Runtime threads spin-wait (see :func:`session_options`); turn it off
            when other work shares the cores, as the service does.
        batch_threads: intra-op threads for inputs of more than one image, in a second session
            of the same file (None: the one session serves every input). A server under load
            runs its batches on fewer threads than a lone image: waking threads for every
            operator costs CPU time that the decoding of the next images needs, while a lone
            image is answered fastest on every core.
    """

    def __init__(
        self,
        bundle: Bundle | Path,
        *,
        taxonomy: Taxonomy | None = None,
        threads: int | None = None,
        precision: Precision = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        spin: bool = True,
        batch_threads: int | None = None,
    ) -> None:
        if batch_threads is not None and batch_threads < 1:
            raise PredictorError(f"batch_threads must be at least 1, got {batch_threads}")
        if threads is not None and threads < 1:
            raise PredictorError(
                f"threads must be at least 1 (or None for all cores), got {threads}"
            )
        if max_batch < 1:
            raise PredictorError(f"max_batch must be at least 1, got {max_batch}")
        self._taxonomy = taxonomy or default_taxonomy()
        self._bundle = (
            bundle if isinstance(bundle, Bundle) else load_bundle(bundle, taxonomy=self._taxonomy)
        )
        self._precision = self._bundle.resolve_precision(precision)
        self._max_batch = max_batch
        self._threads = threads
        model_path = self._bundle.model_path(self._precision)
        try:
            self._session = ort.InferenceSession(
                str(model_path),
                session_options(threads, spin=spin),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{model_path}: ONNX Runtime cannot load it ({exc})") from exc
        self._check_session(model_path)
        self._batch_session: ort.InferenceSession | None = None
        if batch_threads is not None and batch_threads != threads:
            self._batch_session = ort.InferenceSession(
                str(model_path),
                session_options(batch_threads, spin=spin),
                providers=["CPUExecutionProvider"],
            )
        logger.info(
            "predictor ready: bundle %s, %s, %s threads",
            self.version,
            self._precision,
            "default" if threads is None else threads,
        )

    def _check_session(self, model_path: Path) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise BundleError(f"{model_path}: the model has no input named {INPUT_NAME!r}")
        outputs = {o.name: o for o in self._session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        ood_spec = self._bundle.manifest.ood
        if ood_spec is not None and ood_spec.features not in outputs:
            missing.append(ood_spec.features)
        if missing:
            raise BundleError(f"{model_path}: the model lacks outputs {missing}")
        classes = outputs["logits"].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise BundleError(
                f"{model_path}: the model has {classes} outputs but the bundle has "
                f"{len(self.labels)} labels"
            )
        size = inputs[INPUT_NAME].shape[-1]
        if isinstance(size, int) and size != self.preprocess.input_size:
            raise BundleError(
                f"{model_path}: the model takes {size}x{size} images but the manifest says "
                f"{self.preprocess.input_size}"
            )

    # ---- properties ----------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        """The verified bundle this predictor runs."""
        return self._bundle

    @property
    def version(self) -> str:
        """The bundle version."""
        return self._bundle.version

    @property
    def labels(self) -> tuple[Label, ...]:
        """The bundle's labels, in output order."""
        return self._bundle.labels

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing the bundle's model expects."""
        return self._bundle.manifest.preprocess

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the bundle was trained on (``camera``, ``xray``)."""
        return self._bundle.manifest.modalities

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8``: the model file in use."""
        return self._precision

    @property
    def threads(self) -> int | None:
        """The intra-op thread count asked for (None: ONNX Runtime's default)."""
        return self._threads

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the ONNX Runtime session was created with."""
        return self._session.get_session_options()

    @property
    def taxonomy(self) -> Taxonomy:
        """The taxonomy used for roll-up and appendices."""
        return self._taxonomy

    # ---- inference -----------------------------------------------------------------------
    def _check_batch(self, batch: npt.ArrayLike) -> FloatArray:
        array = np.asarray(batch)
        size = self.preprocess.input_size
        if array.ndim != 4 or array.shape[1:] != (3, size, size):
            raise PredictorError(
                f"images must be a (N, 3, {size}, {size}) array (use "
                f"model.preprocess.preprocess_bytes), got shape {tuple(array.shape)}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise PredictorError(f"images must be floating point, got {array.dtype}")
        result: FloatArray = np.ascontiguousarray(array, dtype=np.float32)
        return result

    def _run(self, batch: FloatArray, outputs: Sequence[str]) -> list[npt.NDArray[Any]]:
        chunks: list[list[npt.NDArray[Any]]] = []
        session = self._session
        if self._batch_session is not None and batch.shape[0] > 1:
            session = self._batch_session
        for start in range(0, batch.shape[0], self._max_batch):
            part = batch[start : start + self._max_batch]
            chunks.append(session.run(list(outputs), {INPUT_NAME: part}))
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(outputs))]

    def _countries(self, origin_countries: Sequence[str | None] | None, n: int) -> list[str | None]:
        if origin_countries is None:
            return [None] * n
        if len(origin_countries) != n:
            raise PredictorError(
                f"origin_countries must have one entry per image ({n}), got {len(origin_countries)}"
            )
        return [self._taxonomy.normalize_country(c) for c in origin_countries]

    def predict_arrays(
        self,
        batch: npt.ArrayLike,
        *,
        origin_countries: Sequence[str | None] | None = None,
        top_k: int = 5,
        with_features: bool = False,
        checks: Sequence[ImageChecks | None] | None = None,
    ) -> list[Prediction]:
        """Predict a batch of preprocessed images (N,3,S,S); the real inference path.

        For a camera-only bundle every image first passes the image checks: one the quality gate
        refuses gets ``unusable_image``; a scanner image gets ``outside_training_domain``.
        Neither gets a taxon, a look-alike or a top list.

        Args:
            batch: normalised images as made by :func:`model.preprocess.preprocess_bytes`.
            origin_countries: one ISO 3166-1 alpha-2 code (or None) per image; decides the
                appendix for split listings. Invalid codes raise ``InvalidCountryError``.
            top_k: how many labels to list per image.
            with_features: keep the pooled features in each :class:`Prediction`.
            checks: one :class:`~model.checks.ImageChecks` (or None) per image, as made by
                :func:`model.checks.prepare_input` from the whole decoded image; an image
                without is checked on its model input (:func:`model.checks.check_array`).
        """
        images = self._check_batch(batch)
        if top_k < 1:
            raise PredictorError(f"top_k must be at least 1, got {top_k}")
        countries = self._countries(origin_countries, images.shape[0])
        if checks is not None and len(checks) != images.shape[0]:
            raise PredictorError(
                f"checks must have one entry per image ({images.shape[0]}), got {len(checks)}"
            )
        if images.shape[0] == 0:
            return []
        verdicts = [
            (checks[i] if checks is not None else None) or check_array(images[i], self.preprocess)
            for i in range(images.shape[0])
        ]
        names = ["logits", "features"]
        if self.locates:
            names.append("cam")
        scored = self.ood_output
        if scored != "features":
            names.append(scored)
        outputs = dict(zip(names, self._run(images, names), strict=True))
        return self.predict_outputs(
            outputs["logits"],
            outputs["features"],
            countries=countries,
            top_k=top_k,
            with_features=with_features,
            checks=verdicts,
            cams=outputs.get("cam"),
            ood_features=outputs.get(scored),
        )

    @property
    def ood_output(self) -> str:
        """The ONNX output the bundle's OOD model scores (``features`` without one;
        ``reference_features`` for a kNN bundle): what an answer needs besides the logits."""
        spec = self._bundle.manifest.ood
        return "features" if spec is None else spec.features

    def predict_outputs(
        self,
        logits: npt.ArrayLike,
        features: npt.ArrayLike,
        *,
        countries: Sequence[str | None],
        top_k: int = 5,
        with_features: bool = False,
        cams: npt.ArrayLike | None = None,
        checks: Sequence[ImageChecks] | None = None,
        ood_features: npt.ArrayLike | None = None,
    ) -> list[Prediction]:
        """From the network's outputs (logits (N,C), pooled features (N,F)) to predictions:
        temperature-scaled softmax, out-of-domain score, decision. ``countries`` are normalised
        origin codes, one per row; ``checks`` the image checks, one per row (None: the caller
        made none, and an image the checks would refuse is answered from its outputs).
        :meth:`predict_arrays` calls it after running the network; the offline page's golden
        cases call it with the outputs of the browser's runtime. ``cams`` (N,C,h,w): the
        activation maps, for the box of bundles that locate (x-ray). ``ood_features``: what
        the OOD model scores when the manifest names another output than ``features``
        (``reference_features``); required then."""
        logits = np.asarray(logits, dtype=np.float32)
        features = np.asarray(features, dtype=np.float32)
        cam_maps = None if cams is None else np.asarray(cams, dtype=np.float32)
        manifest = self._bundle.manifest
        locate = self.locates
        probabilities = softmax(logits, manifest.temperature)
        ood = self._bundle.ood
        if self.ood_output == "features" and ood_features is None:
            ood_features = features
        if ood is not None and ood_features is None:
            raise PredictorError(
                f"this bundle's OOD model scores the {self.ood_output!r} output: pass it as "
                "ood_features"
            )
        scores = None if ood is None else ood.score(np.asarray(ood_features, dtype=np.float32))
        ood_threshold = None if manifest.ood is None else manifest.ood.threshold
        results: list[Prediction] = []
        for i, probs in enumerate(probabilities):
            score = None if scores is None else float(scores[i])
            image_checks = checks[i] if checks is not None else None
            refused = None if image_checks is None else self._refusal(image_checks)
            if refused is not None:
                results.append(
                    Prediction(
                        probabilities=probs,
                        top=[],
                        decision=refused,
                        ood_score=score,
                        features=features[i].astype(np.float32) if with_features else None,
                        located=locate,
                        checks=image_checks,
                    )
                )
                continue
            decision = decide(
                probs,
                self.labels,
                self._taxonomy,
                manifest.thresholds,
                countries[i],
                ood_score=score,
                ood_threshold=ood_threshold,
            )
            top = self._top(probs, top_k)
            results.append(
                Prediction(
                    probabilities=probs,
                    top=top,
                    decision=decision,
                    ood_score=score,
                    features=features[i].astype(np.float32) if with_features else None,
                    box=(
                        self._box(cam_maps[i], top[0].label.index)
                        if locate and cam_maps is not None
                        else None
                    ),
                    located=locate,
                    checks=image_checks,
                )
            )
        return results

    def fuse(
        self,
        predictions: Sequence[Prediction],
        *,
        origin_country: str | None = None,
        top_k: int = 5,
        ood_fusion: str = DEFAULT_OOD_FUSION,
    ) -> tuple[Prediction, FusedDecision]:
        """One answer for several photos of one object (:mod:`model.fusion`): the fused
        prediction (its ``top`` is empty when every view was refused) and how it was made.
        ``predictions`` come from this predictor, one per view, in the order taken."""
        ood_spec = self._bundle.manifest.ood
        fused = fuse_views(
            [
                ViewResult(p.probabilities, p.ood_score, p.decision, refused=not p.top)
                for p in predictions
            ],
            self.labels,
            self._taxonomy,
            self._bundle.manifest.thresholds,
            ood_threshold=None if ood_spec is None else ood_spec.threshold,
            origin_country=self._taxonomy.normalize_country(origin_country),
            ood_fusion=ood_fusion,
        )
        probabilities = fused.probabilities.astype(np.float32)
        top = self._top(probabilities, top_k) if fused.used else []
        prediction = Prediction(
            probabilities=probabilities,
            top=top,
            decision=fused.decision,
            ood_score=fused.ood_score,
            located=self.locates,
        )
        return prediction, fused

    def _top(self, probabilities: FloatArray, top_k: int) -> list[LabelScore]:
        """The ``top_k`` most probable labels, most probable first (ties in label order)."""
        order = np.argsort(-probabilities, kind="stable")[: min(top_k, len(self.labels))]
        return [LabelScore(self.labels[j], float(probabilities[j])) for j in order]

    def _refusal(self, checks: ImageChecks) -> Decision | None:
        """The decision that replaces the model's when an image check fails, else None. Both
        checks guard camera-only bundles: a bundle that takes x-ray images gets its images from
        scanners, whose exposure and sharpness the "retake the photo" gate was not made for."""
        if "xray" in self.modalities:
            return None
        if not checks.quality.usable:
            return unusable_image(checks.quality.problems)
        if checks.modality.looks_like_scanner:
            return scanner_image(checks.modality.signature, self.modalities)
        return None

    @property
    def locates(self) -> bool:
        """True for x-ray bundles: their answers say where the suspected object is (a box)."""
        return "xray" in self._bundle.manifest.modalities

    def _box(self, cam: npt.NDArray[Any], index: int) -> tuple[float, float, float, float] | None:
        """The box of label ``index``'s activation map; None for a "not wildlife" label."""
        if self.labels[index].kind == "not_wildlife":
            return None
        activation = cam[index].astype(np.float32)
        activation = activation - float(activation.min())
        return heatmap_box(activation)

    def predict_one(
        self, image: npt.ArrayLike, *, origin_country: str | None = None, top_k: int = 5
    ) -> Prediction:
        """Predict one preprocessed image (3,S,S): a batch of one."""
        array = np.asarray(image)
        if array.ndim != 3:
            raise PredictorError(f"one image must have shape (3, S, S), got {tuple(array.shape)}")
        return self.predict_arrays(array[None], origin_countries=[origin_country], top_k=top_k)[0]

    def prepare_input(
        self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[FloatArray, ImageChecks]:
        """Decode image bytes once: the model input and its image checks (raises ImageError)."""
        return prepare_input(data, self.preprocess, max_pixels=max_pixels)

    def preprocess_bytes(self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> FloatArray:
        """Decode and preprocess image bytes with the bundle's settings (raises ImageError)."""
        return preprocess_bytes(data, self.preprocess, max_pixels=max_pixels)

    def predict_bytes(
        self,
        images: Sequence[bytes],
        *,
        origin_countries: Sequence[str | None] | None = None,
        top_k: int = 5,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Prediction | ImageError]:
        """Predict encoded images; an image that cannot be decoded yields its ``ImageError``
        in its place while the others are still predicted (results keep the input order)."""
        countries = self._countries(origin_countries, len(images))
        arrays: list[FloatArray] = []
        image_checks: list[ImageChecks | None] = []
        positions: list[int] = []
        errors: dict[int, ImageError] = {}
        for i, data in enumerate(images):
            try:
                array, checked = self.prepare_input(data, max_pixels=max_pixels)
            except ImageError as exc:
                errors[i] = exc
                continue
            arrays.append(array)
            image_checks.append(checked)
            positions.append(i)
        predictions: dict[int, Prediction] = {}
        if arrays:
            done = self.predict_arrays(
                np.stack(arrays),
                origin_countries=[countries[i] for i in positions],
                top_k=top_k,
                checks=image_checks,
            )
            predictions = dict(zip(positions, done, strict=True))
        return [predictions[i] if i in predictions else errors[i] for i in range(len(images))]

    def heatmap(self, image: npt.ArrayLike | bytes, label_index: int | None = None) -> FloatArray:
        """Class activation map (h, w) in [0, 1] for ``label_index`` (default: the top label).

        ``image`` is encoded bytes or one preprocessed array (3,S,S). The map covers the model
        input (the centre crop for ``crop="center"``); see :mod:`model.heatmap` to draw it.
        """
        array = self.preprocess_bytes(image) if isinstance(image, bytes) else np.asarray(image)
        if array.ndim != 3:
            raise PredictorError(f"one image must have shape (3, S, S), got {tuple(array.shape)}")
        logits, cam = self._run(self._check_batch(array[None]), ("logits", "cam"))
        index = int(np.argmax(logits[0])) if label_index is None else label_index
        if not 0 <= index < len(self.labels):
            raise PredictorError(f"label_index must be in 0..{len(self.labels) - 1}, got {index}")
        activation = cam[0, index].astype(np.float32)
        activation -= activation.min()
        peak = float(activation.max())
        result: FloatArray = activation / peak if peak > 0 else np.zeros_like(activation)
        return result

    def warmup(self) -> None:
        """Run one blank image so the first real request does not pay for initialisation."""
        size = self.preprocess.input_size
        self._run(np.zeros((1, 3, size, size), dtype=np.float32), OUTPUT_NAMES)
