"""The closed vocabularies every package shares: image modalities and decision kinds.

One definition each; ``model``, ``training`` and ``service`` import them from here (the HTTP
schema, the CLI choices, the bundle manifest's validation and the guidance texts).
"""

from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["camera", "xray"]
"""How an image was taken: a camera photo or a scanner's x-ray image."""

MODALITIES: tuple[str, ...] = get_args(Modality)

DecisionKind = Literal[
    "taxon", "lookalike", "uncertain", "outside_training_domain", "unusable_image"
]
"""What an answer says: a (CITES) taxon, a look-alike material, uncertain (refer to an expert),
outside what the model was trained on, or an image the quality gate refused (retake it)."""

DECISION_KINDS: tuple[str, ...] = get_args(DecisionKind)
