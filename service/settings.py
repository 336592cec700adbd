"""Typed service settings read from the environment (prefix ``CITES_``) and validated at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from service.httpserver import HttpLimits

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
    replica_poll_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="seconds between checks of the active model version in the database, so "
        "that replicas sharing it follow an activation (0 turns the check off)",
    )
    decode_workers: int = Field(default=4, ge=1, le=64)
    decode_timeout_s: float = Field(
        default=10.0, gt=0.0, description="a decode running longer is stopped (422)"
    )
    decode_memory_mb: int | None = Field(
        default=3072, ge=256, description="address space of one decode worker (None: unlimited)"
    )
    decode_slots_per_key: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="decode workers one API key may hold at once (default: half, at least 1)",
    )
    max_requests_per_key: int | None = Field(
        default=None,
        ge=1,
        description="images one API key may have in progress, 429 beyond (default: half of "
        "CITES_QUEUE_MAX, at least CITES_MAX_BATCH_IMAGES)",
    )
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="largest request head (431 beyond)"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0.0, description="time to send a complete request head (408 beyond)"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0.0, description="longest pause while a request body arrives"
    )
    keep_alive_s: int = Field(default=5, ge=1, description="idle keep-alive connections close")
    max_connections: int = Field(
        default=1000, ge=1, description="open connections and requests at once (503 beyond)"
    )
    record_scope: Literal["all", "key", "group"] = Field(
        default="all", description="which identifications officer/scanner keys read"
    )
    allow_anonymous: bool = False
    auth_failure_burst: int = Field(
        default=30, ge=1, description="wrong keys an address may send before it gets 429"
    )
    auth_failures_per_minute: float = Field(
        default=30.0, ge=0.0, description="how fast that allowance refills"
    )
    keep_gps: bool = False
    onnx_threads: int | None = Field(default=None, ge=1, le=256)
    onnx_batch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="intra-op threads for micro-batches of 2+ images, in a second session "
        "(unset or the same value as CITES_ONNX_THREADS: one session for both)",
    )
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
        if self.max_requests_per_key is not None and (
            self.max_requests_per_key < self.max_batch_images
        ):
            raise ValueError(
                f"CITES_MAX_REQUESTS_PER_KEY ({self.max_requests_per_key}) must be at least "
                f"CITES_MAX_BATCH_IMAGES ({self.max_batch_images}): one batch comes from one key"
            )
        return self

    @property
    def resolved_max_requests_per_key(self) -> int:
        """Images one key may have in progress: the setting, else half the queue (but a whole
        batch at least)."""
        if self.max_requests_per_key is not None:
            return self.max_requests_per_key
        return max(self.max_batch_images, self.queue_max // 2)

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

    def http_limits(self) -> HttpLimits:
        """The connection limits of the shipped HTTP server."""
        from service.httpserver import HttpLimits

        return HttpLimits(
            max_header_bytes=self.max_header_bytes,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
            max_connections=self.max_connections,
        )

    @property
    def images_dir(self) -> Path:
        """Root of the content-addressed image store."""
        return self.data_dir / "images"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags win)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
