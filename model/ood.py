"""Out-of-training-domain detection: Mahalanobis distance in a PCA space, or k-nearest neighbours.

Two detectors share one interface (``score(features) -> (N,)``, ``save``, ``load``), chosen by the
manifest's ``ood.method`` (:func:`load_ood`):

- ``mahalanobis_pca`` (:class:`OodModel`), described below;
- ``knn_cosine`` (:class:`KnnOodModel`): one minus the mean cosine similarity to the ``k``
  nearest training feature vectors (a reference bank stored float16). On the ImageNet-pretrained
  backbone's features (the bundle's ``reference_features`` output) it separates new kinds of
  products far better than any score on the fine-tuned features (docs/model-card.md, "Open
  set").

``fit_ood`` learns what the training images look like in the backbone's feature space: features
are (optionally) L2-normalised, centred and projected onto the top ``k`` principal components;
each class gets its mean there and all classes share one covariance (pooled within-class, with a
small ridge). Two distances, each scaled to sit near 1 for training images, are combined by their
maximum: the Mahalanobis distance to the nearest class mean (divided by ``sqrt(k)``), and the
norm of what the k components leave unexplained (divided by its training mean), which catches
images that differ in directions the training images never varied in. Large scores mean "unlike
anything the model was trained on". Stored float32 in ``ood.npz`` (about 0.7 MB for F=1280,
k=128).

Only numpy: the predictor uses it inside the service.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

OOD_METHOD = "mahalanobis_pca"
"""Name recorded in the manifest's ``ood.method``."""

KNN_METHOD = "knn_cosine"
"""Name of the k-nearest-neighbour detector in the manifest's ``ood.method``."""

OOD_FORMAT_VERSION = 1
_ARRAYS = ("center", "basis", "whitening", "class_centers", "classes", "residual_scale", "meta")

FloatArray = npt.NDArray[np.float32]


class OodError(ValueError):
    """Bad input to fitting or scoring, or an unreadable ``ood.npz``."""


@dataclass(frozen=True, eq=False)
class OodModel:
    """A fitted detector: ``score(features)`` is the Mahalanobis distance to the nearest class.

    Attributes:
        center: feature mean subtracted before projection, shape (F,).
        basis: the top-k principal directions, (F, k), orthonormal columns.
        whitening: whitens the shared within-class covariance in PCA space, (k, k).
        class_centers: class means in the whitened space, (C, k).
        classes: label index of each row of ``class_centers``, (C,).
        residual_scale: mean norm of the training residual outside the k components.
        normalize: whether features are L2-normalised first.
    """

    center: FloatArray
    basis: FloatArray
    whitening: FloatArray
    class_centers: FloatArray
    classes: npt.NDArray[np.int64]
    residual_scale: float
    normalize: bool = True

    @property
    def feature_dim(self) -> int:
        """Feature width F the model expects."""
        return int(self.basis.shape[0])

    @property
    def components(self) -> int:
        """Dimension k of the reduced space."""
        return int(self.basis.shape[1])

    def _centered(self, features: npt.ArrayLike) -> FloatArray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise OodError(
                f"features must have shape (N, {self.feature_dim}), got {tuple(x.shape)}"
            )
        if not np.all(np.isfinite(x)):
            raise OodError("features contain NaN or infinite values")
        if self.normalize:
            x = _l2_normalize(x)
        centered: FloatArray = x - self.center
        return centered

    def transform(self, features: npt.ArrayLike) -> FloatArray:
        """Map features (N, F) into the whitened reduced space (N, k)."""
        reduced = self._centered(features) @ self.basis
        result: FloatArray = (reduced @ self.whitening).astype(np.float32)
        return result

    def score(self, features: npt.ArrayLike) -> FloatArray:
        """Out-of-domain score of each feature vector (N, F), shape (N,); about 1 in domain.

        The maximum of the Mahalanobis distance to the nearest class mean over ``sqrt(k)`` and
        the residual norm outside the principal subspace over its training mean.
        """
        centered = self._centered(features)
        reduced = centered @ self.basis
        residual = np.linalg.norm(centered - reduced @ self.basis.T, axis=1)
        z = reduced @ self.whitening
        squared = (
            np.sum(z * z, axis=1, keepdims=True)
            - 2.0 * z @ self.class_centers.T
            + np.sum(self.class_centers * self.class_centers, axis=1)[None, :]
        )
        nearest = np.maximum(squared.min(axis=1), 0.0)
        mahalanobis = np.sqrt(nearest) / math.sqrt(self.components)
        scores: FloatArray = np.maximum(mahalanobis, residual / self.residual_scale).astype(
            np.float32
        )
        return scores

    def save(self, path: Path) -> None:
        """Write the model to ``path`` (an ``.npz`` file, float32, no pickles)."""
        meta = np.array([OOD_FORMAT_VERSION, int(self.normalize)], dtype=np.int64)
        with Path(path).open("wb") as handle:
            np.savez_compressed(
                handle,
                center=self.center.astype(np.float32),
                basis=self.basis.astype(np.float32),
                whitening=self.whitening.astype(np.float32),
                class_centers=self.class_centers.astype(np.float32),
                classes=self.classes.astype(np.int64),
                residual_scale=np.array([self.residual_scale], dtype=np.float32),
                meta=meta,
            )

    @classmethod
    def load(cls, path: Path) -> OodModel:
        """Read a model written by :meth:`save`; raises :class:`OodError` if it is malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in _ARRAYS if name not in data.files]
                if missing:
                    raise OodError(f"{path}: missing arrays {', '.join(missing)}")
                arrays = {name: data[name] for name in _ARRAYS}
        except (OSError, ValueError) as exc:
            if isinstance(exc, OodError):
                raise
            raise OodError(f"{path}: not a readable ood.npz ({exc})") from exc
        meta = arrays["meta"]
        if meta.shape != (2,) or int(meta[0]) != OOD_FORMAT_VERSION:
            raise OodError(f"{path}: unsupported ood format (expected {OOD_FORMAT_VERSION})")
        model = cls(
            center=arrays["center"].astype(np.float32),
            basis=arrays["basis"].astype(np.float32),
            whitening=arrays["whitening"].astype(np.float32),
            class_centers=arrays["class_centers"].astype(np.float32),
            classes=arrays["classes"].astype(np.int64),
            residual_scale=float(arrays["residual_scale"].reshape(-1)[0]),
            normalize=bool(meta[1]),
        )
        _check_shapes(model, str(path))
        return model


def _check_shapes(model: OodModel, where: str) -> None:
    f, k = model.basis.shape if model.basis.ndim == 2 else (-1, -1)
    if f < 1 or model.center.shape != (f,):
        raise OodError(f"{where}: center and basis shapes disagree")
    if model.whitening.shape != (k, k):
        raise OodError(f"{where}: whitening must have shape ({k}, {k})")
    if not model.residual_scale > 0:
        raise OodError(f"{where}: residual_scale must be positive")
    if model.class_centers.ndim != 2 or model.class_centers.shape[1] != k:
        raise OodError(f"{where}: class_centers must have shape (C, {k})")
    if model.classes.shape != (model.class_centers.shape[0],):
        raise OodError(f"{where}: classes must have one entry per class centre")


def _l2_normalize(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    result: FloatArray = x / np.maximum(norms, 1e-12)
    return result


def fit_ood(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    components: int = 128,
    ridge: float = 1e-3,
    normalize: bool = True,
) -> OodModel:
    """Fit the detector on training features (N, F) and their label indices (N,).

    Args:
        features: pooled backbone features of the training images.
        labels: the label index of each row.
        components: PCA dimension k (capped at N-1 and F).
        ridge: added to the shared covariance, relative to its mean eigenvalue.
        normalize: L2-normalise features before everything else.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] < 3:
        raise OodError(f"features must be a (N, F) array with N >= 3, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise OodError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not np.all(np.isfinite(x)):
        raise OodError("features contain NaN or infinite values")
    if components < 1:
        raise OodError(f"components must be >= 1, got {components}")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    classes = np.unique(y).astype(np.int64)
    k = min(components, x.shape[0] - len(classes), x.shape[1] - 1)
    if k < 1:
        raise OodError(f"too few samples ({x.shape[0]}) for {len(classes)} classes")

    center = x.mean(axis=0)
    centered = x - center
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    basis = vt[:k].T  # (F, k)
    z = centered @ basis
    means = np.stack([z[y == c].mean(axis=0) for c in classes])
    residual = z - means[np.searchsorted(classes, y)]
    covariance = residual.T @ residual / max(x.shape[0] - len(classes), 1)
    covariance += np.eye(k) * ridge * max(float(np.trace(covariance)) / k, 1e-12)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    whitening = eigvecs / np.sqrt(np.maximum(eigvals, 1e-12))  # (k, k)
    residual_norms = np.linalg.norm(centered - z @ basis.T, axis=1)
    model = OodModel(
        center=center.astype(np.float32),
        basis=basis.astype(np.float32),
        whitening=whitening.astype(np.float32),
        class_centers=(means @ whitening).astype(np.float32),
        classes=classes,
        residual_scale=max(float(residual_norms.mean()), 1e-12),
        normalize=normalize,
    )
    logger.info(
        "fitted OOD model: %d samples, %d classes, %d -> %d dims",
        x.shape[0],
        len(classes),
        x.shape[1],
        k,
    )
    return model


def threshold_at(model: OodModel, features: npt.ArrayLike, quantile: float = 0.99) -> float:
    """The score below which ``quantile`` of ``features`` (e.g. held-out in-domain) fall."""
    if not 0.0 < quantile <= 1.0:
        raise OodError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(model.score(features), quantile))


@dataclass(frozen=True, eq=False)
class KnnOodModel:
    """``score(features)``: one minus the mean cosine similarity to the ``k`` nearest rows of
    ``bank`` (L2-normalised training features, float16). 0 for a training image itself; larger
    means less like anything the model was trained on."""

    bank: npt.NDArray[np.float16]
    k: int
    _bank32: npt.NDArray[np.float32] = field(init=False, repr=False)
    """The bank in float32, made once: converting it on every call cost more than the
    search itself (docs/benchmarks.md, "Analysis of the misses")."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bank32", np.ascontiguousarray(self.bank, dtype=np.float32))

    @property
    def feature_dim(self) -> int:
        """Feature width F the model expects."""
        return int(self.bank.shape[1])

    def score(self, features: npt.ArrayLike, *, chunk: int = 256) -> FloatArray:
        """Out-of-domain score of each feature vector (N, F), shape (N,)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise OodError(
                f"features must have shape (N, {self.feature_dim}), got {tuple(x.shape)}"
            )
        if not np.all(np.isfinite(x)):
            raise OodError("features contain NaN or infinite values")
        x = _l2_normalize(x)
        bank = self._bank32
        k = min(self.k, bank.shape[0])
        scores = np.empty(x.shape[0], dtype=np.float32)
        for start in range(0, x.shape[0], chunk):
            sims = x[start : start + chunk] @ bank.T
            top = np.partition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k :]
            scores[start : start + chunk] = 1.0 - top.mean(axis=1)
        return scores

    def save(self, path: Path) -> None:
        """Write the model to ``path`` (an ``.npz`` file, no pickles)."""
        meta = np.array([OOD_FORMAT_VERSION, self.k], dtype=np.int64)
        with Path(path).open("wb") as handle:
            np.savez_compressed(handle, bank=self.bank.astype(np.float16), meta=meta)

    @classmethod
    def load(cls, path: Path) -> KnnOodModel:
        """Read a model written by :meth:`save`; raises :class:`OodError` if it is malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "bank" not in data.files or "meta" not in data.files:
                    raise OodError(f"{path}: missing arrays bank, meta")
                bank, meta = data["bank"], data["meta"]
        except (OSError, ValueError) as exc:
            if isinstance(exc, OodError):
                raise
            raise OodError(f"{path}: not a readable ood.npz ({exc})") from exc
        if meta.shape != (2,) or int(meta[0]) != OOD_FORMAT_VERSION or int(meta[1]) < 1:
            raise OodError(f"{path}: unsupported ood format (expected {OOD_FORMAT_VERSION})")
        if bank.ndim != 2 or bank.shape[0] < 1 or bank.shape[1] < 1:
            raise OodError(f"{path}: bank must be a non-empty (N, F) array")
        if not np.all(np.isfinite(bank)):
            raise OodError(f"{path}: bank contains NaN or infinite values")
        return cls(bank=bank.astype(np.float16), k=int(meta[1]))


def fit_knn(features: npt.ArrayLike, *, k: int = 10) -> KnnOodModel:
    """The k-nearest-neighbour detector over training features (N, F)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise OodError(f"features must be a non-empty (N, F) array, got {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise OodError("features contain NaN or infinite values")
    if k < 1:
        raise OodError(f"k must be >= 1, got {k}")
    logger.info("fitted kNN OOD model: %d reference vectors, k=%d", x.shape[0], k)
    return KnnOodModel(bank=_l2_normalize(x).astype(np.float16), k=k)


AnyOodModel = OodModel | KnnOodModel
"""Either detector."""

OOD_METHODS = (OOD_METHOD, KNN_METHOD)


def load_ood(path: Path, method: str) -> AnyOodModel:
    """Load the detector of ``method`` (``mahalanobis_pca`` or ``knn_cosine``) from ``path``."""
    if method == OOD_METHOD:
        return OodModel.load(path)
    if method == KNN_METHOD:
        return KnnOodModel.load(path)
    raise OodError(f"unknown OOD method {method!r} (known: {', '.join(OOD_METHODS)})")
