"""The model host (service/modelhost.py): which earlier predictors it keeps for heat maps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest


def test_model_host_keeps_the_most_recent_earlier_models_for_heat_maps(tmp_path: Path) -> None:
    from model.taxonomy import default_taxonomy
    from service.modelhost import EARLIER_MODELS_KEPT, ModelHost, ModelUnavailableError
    from tests.factories import make_tiny_bundle

    versions = [f"tiny-{i}" for i in range(EARLIER_MODELS_KEPT + 2)]
    for version in versions:
        make_tiny_bundle(tmp_path, version=version)
    host = ModelHost(
        tmp_path, taxonomy=default_taxonomy(), threads=1, precision="auto", warmup_batch=2
    )
    host.set_initial(host.load(host.find(versions[0])))

    async def scenario() -> None:
        swapped_out = {}
        for version in versions[1:]:
            swapped_out[host.current.version] = host.current  # type: ignore[union-attr]
            await host.activate(version)
        assert (await host.predictor_for(versions[-1])) is host.current
        # the last EARLIER_MODELS_KEPT swapped out are the very predictors that served
        for version in versions[-1 - EARLIER_MODELS_KEPT : -1]:
            assert (await host.predictor_for(version)) is swapped_out[version]
        # the oldest was dropped: it is loaded again from the weights directory
        reloaded = await host.predictor_for(versions[0])
        assert reloaded is not swapped_out[versions[0]]
        assert reloaded.version == versions[0]
        with pytest.raises(ModelUnavailableError, match="tiny-gone"):
            await host.predictor_for("tiny-gone")
        # activating a version that was kept as an earlier one does not keep a second copy
        await host.activate(versions[0])
        assert host._earlier.keys() == {versions[-1]}

    asyncio.run(scenario())
