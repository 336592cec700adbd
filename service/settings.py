"""Typed service settings read from the environment (prefix ``CITES_``) and validated at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path("weights") / "default"


class Settings(BaseSettings):
    """Everything the service can be configured with; invalid values fail at start."""

    model_config = SettingsConfigDict(env_prefix="CITES_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("var"), description="SQLite file and image store")
    bundle_dir: Path = Field(default=DEFAULT_BUNDLE, description="bundle served at first start")
    weights_dir: Path | None = Field(
        default=None, description="folder of bundle versions (default: the bundle's parent)"
    )
    xray_bundle: str = Field(
        default="xray",
        description="folder under the weights directory of the x-ray bundle served at first "
        "start beside the camera one (empty: none; a missing folder serves no x-ray model)",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CITES_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default sqlite under data_dir",
    )
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=50_000_000, ge=1024)
    max_batch_images: int = Field(default=32, ge=1, le=1024)
    batch_max_size: int = Field(default=16, ge=1, le=512)
    batch_max_wait_ms: float = Field(default=5.0, ge=0.0, le=1000.0)
    queue_max: int = Field(default=256, ge=1)
    decode_workers: int = Field(default=4, ge=1, le=64)
    decode_slots_per_key: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="decode workers one API key may hold at once (default: half, at least 1)",
    )
    max_requests_per_key: int = Field(
        default=64, ge=1, description="images one API key may have in progress (429 beyond)"
    )
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    allow_anonymous: bool = False
    keep_gps: bool = False
    onnx_threads: int | None = Field(default=None, ge=1, le=256)
    precision: Literal["auto", "fp32", "int8"] = "auto"
    static_dir: Path | None = Field(
        default=None, description="officer web page (default: service/static when present)"
    )

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"DATABASE_URL is not a valid SQLAlchemy URL: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _check_batch(self) -> Settings:
        if self.queue_max < self.batch_max_size:
            raise ValueError(
                f"CITES_QUEUE_MAX ({self.queue_max}) must be at least "
                f"CITES_BATCH_MAX_SIZE ({self.batch_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _check_per_key(self) -> Settings:
        if self.max_requests_per_key < self.max_batch_images:
            raise ValueError(
                f"CITES_MAX_REQUESTS_PER_KEY ({self.max_requests_per_key}) must be at least "
                f"CITES_MAX_BATCH_IMAGES ({self.max_batch_images}): one batch comes from one key"
            )
        return self

    @property
    def resolved_decode_slots_per_key(self) -> int:
        """Decode workers one key may hold: the setting, else half of them (at least 1)."""
        if self.decode_slots_per_key is not None:
            return min(self.decode_slots_per_key, self.decode_workers)
        return max(1, self.decode_workers // 2)

    @property
    def resolved_weights_dir(self) -> Path:
        """The folder whose sub-folders are the bundle versions that can be activated."""
        return (self.weights_dir or self.bundle_dir.parent).resolve()

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cites.sqlite3').resolve()}"

    @property
    def images_dir(self) -> Path:
        """Root of the content-addressed image store."""
        return self.data_dir / "images"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags win)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
