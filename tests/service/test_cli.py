"""The service's subcommands in-process: serve's checks, keys, models, feedback export."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from model.cli import main
from service.cli import resolve_bundle
from service.database import make_engine, make_sessionmaker
from service.repository import ACTIVE_MODEL_KEY, get_state
from tests.factories import make_corrupt_bundle, make_tiny_bundle


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CITES_BUNDLE_DIR", "CITES_WEIGHTS_DIR", "CITES_DATA_DIR", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    assert (
        main(["keys", "create", "--role", "scanner", "--name", "belt 3", "--data-dir", str(data)])
        == 0
    )
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("cv_")
    key_id = key.split("_")[1]
    assert main(["keys", "list", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "scanner" in listing and "belt 3" in listing
    assert key.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", key, "--data-dir", str(data)]) == 0  # the full key works too
    assert f"revoked key {key_id}" in capsys.readouterr().out


def test_keys_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "var")
    assert main(["keys", "create", "--role", "boss", "--name", "x", "--data-dir", data]) == 2
    assert "unknown role 'boss'" in capsys.readouterr().err
    assert main(["keys", "create", "--role", "admin", "--name", " ", "--data-dir", data]) == 2
    assert "name" in capsys.readouterr().err
    assert main(["keys", "revoke", "0badc0de", "--data-dir", data]) == 2
    assert "keys list" in capsys.readouterr().err


def test_serve_refuses_a_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--bundle", str(tmp_path / "nothing"), "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no model bundle" in err and "--bundle" in err


def test_serve_refuses_a_damaged_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_corrupt_bundle(tmp_path / "weights")
    assert main(["serve", "--bundle", str(bundle), "--data-dir", str(tmp_path / "var")]) == 2
    err = capsys.readouterr().err
    assert "cannot be served" in err and "sha256" in err


def test_serve_refuses_bad_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_tiny_bundle(tmp_path / "weights")
    monkeypatch.setenv("CITES_MAX_UPLOAD_BYTES", "lots")
    assert main(["serve", "--bundle", str(bundle), "--data-dir", str(tmp_path / "var")]) == 2
    assert "max_upload_bytes" in capsys.readouterr().err


def test_bundle_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flag = tmp_path / "flag"
    assert resolve_bundle(flag) == flag
    monkeypatch.setenv("CITES_BUNDLE_DIR", str(tmp_path / "env"))
    assert resolve_bundle(None) == tmp_path / "env"
    monkeypatch.delenv("CITES_BUNDLE_DIR")
    (tmp_path / "weights" / "default").mkdir(parents=True)
    assert resolve_bundle(None) == Path("weights") / "default"
    (tmp_path / "weights" / "default").rmdir()
    assert resolve_bundle(None).parts[-2:] == ("weights", "default")  # the repository's


def test_models_list_and_activate_for_next_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    make_tiny_bundle(weights, version="tiny-1")
    make_tiny_bundle(weights, version="tiny-2")
    make_corrupt_bundle(weights, version="tiny-broken")
    assert main(["models", "list", "--weights-dir", str(weights), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "tiny-1" in out and "tiny-2" in out
    assert "BROKEN" in next(line for line in out.splitlines() if "tiny-broken" in line)
    data = tmp_path / "var"
    args = ["models", "activate", "tiny-2", "--weights-dir", str(weights), "--data-dir", str(data)]
    assert main(args) == 0
    assert "next start" in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{data / 'cites.sqlite3'}")
    with make_sessionmaker(engine)() as session:
        assert get_state(session, ACTIVE_MODEL_KEY) == "tiny-2"
    engine.dispose()
    bad = [
        "models",
        "activate",
        "tiny-broken",
        "--weights-dir",
        str(weights),
        "--data-dir",
        str(data),
    ]
    assert main(bad) == 2
    assert "sha256" in capsys.readouterr().err
    assert (
        main(["models", "activate", "nope", "--weights-dir", str(weights), "--data-dir", str(data)])
        == 2
    )


def test_feedback_export_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    main(["keys", "list", "--data-dir", str(data)])  # creates an empty database
    out = tmp_path / "fb.tar.gz"
    assert main(["feedback", "export", "--data-dir", str(data), "--out", str(out)]) == 0
    assert "wrote 0 labelled images" in capsys.readouterr().out
    with tarfile.open(out) as tar:
        manifest = tar.extractfile("manifest.csv")
        assert manifest is not None
        assert manifest.read().decode().strip() == "path,label,modality,source,case_id"
    missing = ["feedback", "export", "--data-dir", str(tmp_path / "none"), "--out", str(out)]
    assert main(missing) == 2
    bad_since = ["feedback", "export", "--data-dir", str(data), "--out", str(out), "--since", "x"]
    assert main(bad_since) == 2
