"""Units of the service without a model: micro-batcher, guidance, language negotiation,
settings validation and the problem documents."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from service.guidance import (
    GUIDANCE_FILE,
    LANGUAGES,
    GuidanceBook,
    GuidanceError,
    negotiate_language,
)
from service.metrics import ServiceMetrics
from service.settings import Settings


def test_batcher_groups_concurrent_items_and_keeps_order() -> None:
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        time.sleep(0.01)
        return [i * 10 for i in items]

    metrics = ServiceMetrics()

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=0.05, queue_max=64, metrics=metrics
        )
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(20))))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(20)]
    assert max(len(b) for b in seen) == 8
    assert len(seen) == 3  # 8 + 8 + 4
    text = metrics.render().decode()
    assert "cites_batch_size_count 3.0" in text
    assert "cites_batch_size_sum 20.0" in text


def test_batcher_waits_at_most_max_wait_for_a_lone_item() -> None:
    def run(items: Sequence[int]) -> list[int]:
        return list(items)

    async def main() -> float:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=32, max_wait_s=0.03, queue_max=64
        )
        batcher.start()
        started = time.perf_counter()
        await batcher.submit(1)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 0.5


def test_batcher_runs_a_lone_item_without_waiting_max_wait() -> None:
    """Nothing else queued: the item runs at once instead of waiting 500 ms for company."""

    def run(items: Sequence[int]) -> list[int]:
        return list(items)

    async def main() -> list[float]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=32, max_wait_s=0.5, queue_max=64
        )
        batcher.start()
        elapsed = []
        try:
            for i in range(3):
                started = time.perf_counter()
                assert await batcher.submit(i) == i
                elapsed.append(time.perf_counter() - started)
        finally:
            await batcher.close()
        return elapsed

    assert max(asyncio.run(main())) < 0.25


def test_batcher_still_groups_items_queued_behind_a_running_batch() -> None:
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        time.sleep(0.1)
        return list(items)

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=0.5, queue_max=64
        )
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.03)  # the lone first item is running now
            rest = [batcher.submit(i) for i in range(1, 6)]
            return list(await asyncio.gather(first, *rest))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == list(range(6))
    assert seen == [[0], [1, 2, 3, 4, 5]]


def test_batcher_waits_for_announced_items_and_not_for_absent_ones() -> None:
    """With an ``incoming`` signal the batch waits for items on their way (here: one arriving
    50 ms later) and runs at once when none are, even with max_wait at 2 s."""
    seen: list[list[int]] = []
    coming = [0]

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        return list(items)

    async def main() -> tuple[list[int], float]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=2.0, queue_max=64, incoming=lambda: coming[0]
        )
        batcher.start()

        async def late(item: int) -> int:
            await asyncio.sleep(0.05)
            coming[0] -= 1
            return await batcher.submit(item)

        try:
            coming[0] = 1  # item 1 is "decoding" while item 0 reaches the batcher
            joined = list(await asyncio.gather(batcher.submit(0), late(1)))
            started = time.perf_counter()
            pair = await asyncio.gather(batcher.submit(2), batcher.submit(3))
            assert list(pair) == [2, 3]
            return joined, time.perf_counter() - started
        finally:
            await batcher.close()

    joined, elapsed = asyncio.run(main())
    assert joined == [0, 1]
    assert seen == [[0, 1], [2, 3]]
    assert elapsed < 1.0  # nobody announced: no 2 s wait for a third item


def test_batcher_refuses_when_full_and_fails_callers_on_errors() -> None:
    gate = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        if -1 in items:
            raise RuntimeError("boom")
        return list(items)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=1, max_wait_s=0.0, queue_max=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))  # taken by the worker, blocks
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(3)
        gate.set()
        assert await first == 0
        assert [await q for q in queued] == [1, 2]
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(-1)
        assert await batcher.submit(5) == 5  # the worker survived the failed batch
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(6)

    asyncio.run(main())


def test_batcher_skips_cancelled_callers() -> None:
    ran: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        ran.append(list(items))
        return list(items)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=4, max_wait_s=0.05, queue_max=8
        )
        batcher.start()
        doomed = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await batcher.submit(2) == 2
        await batcher.close()

    asyncio.run(main())
    assert [1] not in ran and all(1 not in batch for batch in ran)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("fr", "fr"),
        ("es-ES,es;q=0.9,en;q=0.8", "es"),
        ("de-DE,fr;q=0.5,es;q=0.8", "es"),
        ("de, it", "en"),
        ("fr;q=0, es;q=0.1", "es"),
        ("FR-ca", "fr"),
        ("*", "en"),
        ("en;q=garbage, fr;q=0.3", "fr"),
    ],
)
def test_accept_language(header: str | None, expected: str) -> None:
    assert negotiate_language(header) == expected


def test_guidance_has_every_kind_and_language() -> None:
    book = GuidanceBook.load()
    for kind in ("taxon", "lookalike", "uncertain", "outside_training_domain"):
        for lang in LANGUAGES:
            g = book.lookup(kind, None, lang)
            assert g.language == lang and g.title and g.text
    assert "Appendix I" in book.lookup("taxon", "I", "en").title
    assert "Annexe II" in book.lookup("taxon", "II", "fr").title
    assert "Apéndice III" in book.lookup("taxon", "III", "es").title
    # unknown appendix falls back to the kind's general entry
    assert book.lookup("lookalike", "I", "en") == book.lookup("lookalike", None, "en")


def test_guidance_file_errors_name_the_entry(tmp_path: Path) -> None:
    raw = json.loads(GUIDANCE_FILE.read_text(encoding="utf-8"))
    del raw["uncertain"]["none"]["es"]
    bad = tmp_path / "guidance.json"
    bad.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(GuidanceError, match=r"uncertain/none/es"):
        GuidanceBook.load(bad)


def test_settings_validate_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CITES_BATCH_MAX_SIZE", "8")
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert settings.batch_max_size == 8
    monkeypatch.setenv("CITES_QUEUE_MAX", "4")
    with pytest.raises(ValidationError, match="QUEUE_MAX"):
        Settings()
    monkeypatch.delenv("CITES_QUEUE_MAX")
    monkeypatch.setenv("CITES_MAX_UPLOAD_BYTES", "-1")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("CITES_MAX_UPLOAD_BYTES")
    monkeypatch.setenv("DATABASE_URL", "not a url")
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings()


def test_settings_default_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, bundle_dir=tmp_path / "w" / "default")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/cites.sqlite3"
    assert settings.resolved_weights_dir == (tmp_path / "w").resolve()


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
