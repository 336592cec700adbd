"""Settings validation at start (service/settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


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
