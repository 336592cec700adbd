"""Storage: migrations, API keys, identifications, feedback history and the image store, on
SQLite and on a real PostgreSQL server (started here; skipped only when no server binary)."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from service.database import alembic_config, make_engine, make_sessionmaker, migrate
from service.imagestore import ImageStore, prepare_image
from service.keys import Principal, Role, create_key, list_keys, revoke_key, verify_key
from service.metrics import ServiceMetrics
from service.privacy import GPS_IFD_TAG, strip_location
from service.repository import (
    ListFilter,
    NewIdentification,
    add_feedback,
    add_identification,
    feedback_history,
    get_state,
    latest_feedback,
    list_identifications,
    record_image,
    set_state,
)
from service.tables import Identification, StoredImage
from tests.service_helpers import PostgresServer, start_postgres
from tests.tools import tool_missing


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for this module."""
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        tool_missing(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type[Session]]:
    """A migrated database (SQLite file or a fresh PostgreSQL database) and a session maker."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cites.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database("t" + uuid.uuid4().hex[:12])
    engine = make_engine(url)
    migrate(engine)
    try:
        yield make_sessionmaker(engine)  # type: ignore[misc]
    finally:
        engine.dispose()


def jpeg_with_gps(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small JPEG whose EXIF has a camera make, an orientation and a GPS position."""
    image = Image.new("RGB", (64, 48), color)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 1
    gps = exif.get_ifd(GPS_IFD_TAG)
    gps.update({1: "N", 2: (51.0, 30.0, 12.0), 3: "E", 4: (0.0, 7.0, 40.0)})
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def _principal(session: Session, role: Role = Role.OFFICER) -> Principal:
    key, _info = create_key(session, f"user-{role.value}", role)
    principal = verify_key(session, key)
    assert principal is not None
    return principal


def _identification(
    session: Session,
    principal: Principal,
    *,
    sha: str,
    created_at: datetime,
    case_ref: str | None = None,
    kind: str = "taxon",
    label: str = "ivory",
) -> Identification:
    ident_id = str(uuid.uuid4())
    row = add_identification(
        session,
        NewIdentification(
            principal=principal,
            image_sha256=sha,
            model_version="v1",
            modality="camera",
            origin_country=None,
            case_ref=case_ref,
            decision_kind=kind,
            label=label,
            taxon="loxodonta-africana",
            probability=0.9,
            rule="label_threshold",
            result={"id": ident_id, "decision": {"label": label}, "top_k": [{"label": label}]},
        ),
        ident_id=ident_id,
        created_at=created_at,
    )
    session.commit()
    return row


def _image(session: Session, store: ImageStore, data: bytes) -> StoredImage:
    prepared = prepare_image(data, keep_gps=False)
    relative = store.put(prepared)
    row = record_image(session, prepared, relative)
    session.commit()
    return row


def test_migration_creates_every_table(sessions: type[Session]) -> None:
    with sessions() as session:
        names = set(inspect(session.get_bind()).get_table_names())
    assert {"api_keys", "images", "identifications", "feedback", "service_state"} <= names


@pytest.mark.postgres
def test_concurrent_migrations_on_postgresql(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrate_race")
    engines = [make_engine(url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(engine: Any) -> None:
        try:
            migrate(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "feedback" in inspect(engines[0]).get_table_names()
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_0001_database_upgrades_to_0002_and_keeps_its_rows(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from alembic import command

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database("u" + uuid.uuid4().hex[:12])
    engine = make_engine(url)
    with engine.begin() as connection:  # a database deployed before 0002
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    assert "case_ref" not in {c["name"] for c in inspect(engine).get_columns("feedback")}
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO images (sha256, path, size, mime, width, height, created_at) "
                "VALUES ('ab', 'ab.jpg', 1, 'image/jpeg', 1, 1, :t)"
            ),
            {"t": now},
        )
        connection.execute(
            text(
                "INSERT INTO identifications (id, created_at, created_by_name, image_sha256, "
                "model_version, modality, case_ref, decision_kind, probability, rule, result) "
                "VALUES ('i1', :t, 'old', 'ab', 'v1', 'camera', 'OLD-1', 'taxon', 0.9, 'r', '{}')"
            ),
            {"t": now},
        )
        connection.execute(
            text(
                "INSERT INTO feedback (id, identification_id, created_at, created_by_name, "
                "verdict, note) VALUES ('f1', 'i1', :t, 'old', 'confirm', 'kept')"
            ),
            {"t": now},
        )
    migrate(engine)
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == "0006"  # 0004 model history, 0005 its modality, 0006 multi-view photos
    assert "verifications" in inspect(engine).get_table_names()
    with make_sessionmaker(engine)() as session:
        old = feedback_history(session, "i1")
        assert [(f.id, f.note, f.case_ref) for f in old] == [("f1", "kept", None)]
        ident = session.get(Identification, "i1")
        assert ident is not None and ident.case_ref == "OLD-1"
        officer = _principal(session)
        new = add_feedback(
            session,
            ident,
            officer,
            verdict="confirm",
            label=None,
            taxon_id=None,
            note=None,
            case_ref="SEIZ-2",
        )
        assert latest_feedback(session, ["i1"])["i1"].case_ref == "SEIZ-2"
        assert new.case_ref == "SEIZ-2"
    engine.dispose()


def test_keys_verify_revoke_and_never_store_the_secret(sessions: type[Session]) -> None:
    with sessions() as session:
        key, info = create_key(session, "Officer Ada", "officer")
        assert key.startswith(f"cv_{info.id}_")
        principal = verify_key(session, key)
        assert principal == Principal(info.id, "Officer Ada", Role.OFFICER)
        secret = key.split("_", 2)[2]
        stored = session.execute(text("SELECT secret_hash FROM api_keys")).scalar_one()
        assert secret not in stored
        assert verify_key(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert verify_key(session, "cv_deadbeef_" + "x" * 43) is None
        assert verify_key(session, "not a key") is None
        revoke_key(session, info.id)
        assert verify_key(session, key) is None
        assert list_keys(session)[0].revoked_at is not None


def test_identifications_filter_and_paginate_newest_first(
    sessions: type[Session], tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "images")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions() as session:
        officer = _principal(session)
        scanner = _principal(session, Role.SCANNER)
        image = _image(session, store, jpeg_with_gps())
        for i in range(7):
            _identification(
                session,
                officer if i % 2 == 0 else scanner,
                sha=image.sha256,
                created_at=base + timedelta(minutes=i),
                case_ref="CASE-A" if i < 3 else "CASE-B",
                kind="taxon" if i % 3 else "uncertain",
            )
        rows, total = list_identifications(session, ListFilter(), limit=3, offset=0)
        assert total == 7
        assert [r.created_at for r in rows] == [base + timedelta(minutes=m) for m in (6, 5, 4)]
        assert rows[0].created_at.tzinfo is not None
        page3, _ = list_identifications(session, ListFilter(), limit=3, offset=6)
        assert len(page3) == 1
        rows, total = list_identifications(
            session, ListFilter(case_ref="CASE-A"), limit=10, offset=0
        )
        assert total == 3
        rows, total = list_identifications(
            session, ListFilter(since=base + timedelta(minutes=5)), limit=10, offset=0
        )
        assert total == 2
        rows, total = list_identifications(
            session, ListFilter(decision="uncertain"), limit=10, offset=0
        )
        assert {r.decision_kind for r in rows} == {"uncertain"} and total == 3
        rows, total = list_identifications(
            session, ListFilter(created_by=scanner.key_id), limit=10, offset=0
        )
        assert total == 3


def test_feedback_is_append_only_and_latest_wins(sessions: type[Session], tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    with sessions() as session:
        officer = _principal(session)
        image = _image(session, store, jpeg_with_gps())
        ident = _identification(session, officer, sha=image.sha256, created_at=datetime.now(UTC))
        first = add_feedback(
            session, ident, officer, verdict="confirm", label=None, taxon_id=None, note=None
        )
        second = add_feedback(
            session,
            ident,
            officer,
            verdict="correct",
            label="ceramic",
            taxon_id=None,
            note="glaze visible",
        )
        history = feedback_history(session, ident.id)
        assert [f.id for f in history] == [first.id, second.id]
        assert history[0].verdict == "confirm"  # the older entry is untouched
        assert latest_feedback(session, [ident.id])[ident.id].id == second.id


def test_state_persists(sessions: type[Session]) -> None:
    with sessions() as session:
        assert get_state(session, "active_model_version") is None
        set_state(session, "active_model_version", "v1")
        set_state(session, "active_model_version", "v2")
    with sessions() as session:
        assert get_state(session, "active_model_version") == "v2"


def test_same_image_twice_is_stored_once(sessions: type[Session], tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    data = jpeg_with_gps()
    with sessions() as session:
        first = _image(session, store, data)
        second = _image(session, store, data)
        assert first.sha256 == second.sha256
        assert session.query(StoredImage).count() == 1
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert files[0].relative_to(tmp_path / "images").as_posix() == (
        f"{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}.jpg"
    )


def test_concurrent_record_of_the_same_image(sessions: type[Session], tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    prepared = prepare_image(jpeg_with_gps(), keep_gps=False)
    relative = store.put(prepared)
    errors: list[BaseException] = []

    def record() -> None:
        try:
            with sessions() as session:
                record_image(session, prepared, relative)
                session.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sessions() as session:
        assert session.query(StoredImage).count() == 1
    assert errors == []


# ---- image store (no database) -----------------------------------------------------------


def test_gps_is_removed_from_jpeg_without_touching_pixels() -> None:
    data = jpeg_with_gps()
    assert GPS_IFD_TAG in Image.open(io.BytesIO(data)).getexif()
    prepared = prepare_image(data, keep_gps=False)
    assert prepared.gps_removed
    stripped = Image.open(io.BytesIO(prepared.data))
    exif = stripped.getexif()
    assert GPS_IFD_TAG not in exif
    assert exif[0x010F] == "TestCam"  # other metadata kept
    # The entropy-coded scan is byte-identical: the pixels were not re-encoded.
    assert data[data.index(b"\xff\xda") :] == prepared.data[prepared.data.index(b"\xff\xda") :]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(stripped))


def test_gps_is_kept_when_configured() -> None:
    data = jpeg_with_gps()
    prepared = prepare_image(data, keep_gps=True)
    assert prepared.data == data and not prepared.gps_removed


def test_jpeg_without_gps_is_unchanged() -> None:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, "JPEG")
    assert strip_location(out.getvalue(), "JPEG").data == out.getvalue()


def test_xmp_packet_is_dropped() -> None:
    out = io.BytesIO()
    xmp = b'<x:xmpmeta><rdf:Description exif:GPSLatitude="51,30N"/></x:xmpmeta>'
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, "JPEG", xmp=xmp)
    assert b"GPSLatitude" in out.getvalue()
    assert b"GPSLatitude" not in strip_location(out.getvalue(), "JPEG").data


def test_png_with_gps_is_reencoded_losslessly() -> None:
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    exif = Image.Exif()
    exif.get_ifd(GPS_IFD_TAG).update({1: "S", 2: (1.0, 2.0, 3.0)})
    out = io.BytesIO()
    image.save(out, "PNG", exif=exif.tobytes())
    prepared = prepare_image(out.getvalue(), keep_gps=False)
    assert prepared.gps_removed and prepared.mime == "image/png"
    again = Image.open(io.BytesIO(prepared.data))
    assert GPS_IFD_TAG not in again.getexif()
    assert np.array_equal(np.asarray(again.convert("RGB")), np.asarray(image))


def test_store_writes_atomically_and_refuses_paths_outside(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    prepared = prepare_image(jpeg_with_gps(), keep_gps=False)
    relative = store.put(prepared)
    assert store.read(relative) == prepared.data
    leftovers = [p for p in (tmp_path / "images").rglob(".tmp-*")]
    assert leftovers == []
    with pytest.raises(ValueError, match="leaves the image store"):
        store.path_of("../../etc/passwd")
    assert os.access(store.path_of(relative), os.R_OK)


# ---- group commit of identifications ----------------------------------------------------


def _pending(principal: Principal, color: tuple[int, int, int], ident_id: str) -> Any:
    from service.recorder import PendingIdentification

    image = prepare_image(jpeg_with_gps(color), keep_gps=False)
    return PendingIdentification(
        image=image,
        image_path=f"{image.sha256[:2]}/{image.sha256[2:4]}/{image.sha256}.jpg",
        identification=NewIdentification(
            principal=principal,
            image_sha256=image.sha256,
            model_version="v1",
            modality="camera",
            origin_country=None,
            case_ref="GROUP-1",
            decision_kind="taxon",
            label="ivory",
            taxon="loxodonta-africana",
            probability=0.9,
            rule="label_threshold",
            result={"id": ident_id},
        ),
        ident_id=ident_id,
        created_at=datetime.now(UTC),
    )


def test_concurrent_identifications_share_one_commit(sessions: type[Session]) -> None:
    """30 identifications ready together (10 distinct images) are written in at most two
    transactions, and every row and image row is there afterwards."""
    import asyncio

    from service.recorder import IdentificationRecorder

    with sessions() as session:
        principal = _principal(session)
    metrics = ServiceMetrics()
    pending = [_pending(principal, (20 * (i % 10), 40, 90), str(uuid.uuid4())) for i in range(30)]

    async def main() -> int:
        recorder = IdentificationRecorder(sessions, queue_max=64, metrics=metrics)  # type: ignore[arg-type]
        recorder.start()
        try:
            await asyncio.gather(*(recorder.record(p) for p in pending))
        finally:
            await recorder.close()
        return recorder.commits

    commits = asyncio.run(main())
    assert 1 <= commits <= 2
    with sessions() as session:
        assert session.query(Identification).filter_by(case_ref="GROUP-1").count() == 30
        assert session.query(StoredImage).count() == 10
    assert "cites_db_commit_rows_sum 30.0" in metrics.render().decode()


def test_a_failing_identification_fails_only_its_own_request(sessions: type[Session]) -> None:
    """A row that cannot be written (here: a duplicate id) fails its caller with the database
    error; the rows committed in the same group are all stored."""
    import asyncio

    from sqlalchemy.exc import IntegrityError

    from service.recorder import IdentificationRecorder

    with sessions() as session:
        principal = _principal(session)
    taken = str(uuid.uuid4())
    good = [_pending(principal, (10, 10 * i, 200), str(uuid.uuid4())) for i in range(5)]
    bad = _pending(principal, (0, 250, 250), taken)

    async def main() -> list[BaseException | None]:
        recorder = IdentificationRecorder(sessions, queue_max=64)  # type: ignore[arg-type]
        recorder.start()
        try:
            await recorder.record(_pending(principal, (250, 250, 0), taken))  # stored first
            return await asyncio.gather(
                *(recorder.record(p) for p in [*good[:2], bad, *good[2:]]),
                return_exceptions=True,
            )
        finally:
            await recorder.close()

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[2], IntegrityError)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 5
    with sessions() as session:
        assert session.query(Identification).filter_by(case_ref="GROUP-1").count() == 6


def test_a_cancelled_caller_returns_only_once_its_row_is_settled(sessions: type[Session]) -> None:
    """A request that times out while its row is being committed gets its cancellation only
    after the commit, so its clean-up sees the row (and keeps the image file)."""
    import asyncio

    from service.recorder import IdentificationRecorder

    with sessions() as session:
        principal = _principal(session)
    pending = _pending(principal, (1, 2, 3), str(uuid.uuid4()))
    release = threading.Event()

    async def main() -> float:
        recorder = IdentificationRecorder(sessions, queue_max=8)  # type: ignore[arg-type]
        original = recorder._commit

        def slow_commit(group: Any) -> None:
            release.wait(5)
            original(group)

        recorder._commit = slow_commit  # type: ignore[method-assign]
        recorder.start()
        threading.Timer(0.3, release.set).start()
        started = time.perf_counter()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(recorder.record(pending), 0.05)
            return time.perf_counter() - started
        finally:
            await recorder.close()

    waited = asyncio.run(main())
    assert waited >= 0.25  # the timeout was raised after the commit, not at 50 ms
    with sessions() as session:
        assert session.get(Identification, pending.ident_id) is not None
