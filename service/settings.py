"""Service settings: one frozen pydantic object, read from ``MOECARVE_*`` environment variables.

Each field ``name`` is read from ``MOECARVE_<NAME>``; list fields take comma-separated values
(paths: ``os.pathsep``-separated). CLI flags override the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from moecarve.errors import MoecarveError

ENV_PREFIX = "MOECARVE_"


class SettingsError(MoecarveError):
    """The service configuration is invalid or unsafe."""


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "moecarve" / "service"


class Settings(BaseModel):
    """Configuration of the API process and the workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Holds the job database (jobs.sqlite3) and every job's artifacts (jobs/<id>/).",
    )
    api_keys: tuple[SecretStr, ...] = Field(
        (), description="Accepted bearer API keys (comma-separated)."
    )
    api_keys_file: Path | None = Field(
        None, description="A file with one accepted API key per line."
    )
    open_access: bool = Field(
        False, description="Local use only: no API keys; every request acts as one owner 'local'."
    )
    allowed_roots: tuple[Path, ...] = Field(
        (),
        description="Directories under which model directories and calibration/evaluation files may "
        "live (os.pathsep-separated). Empty: only the packaged default model and embedded corpora.",
    )
    allow_hub: bool = Field(
        False, description="Accept Hugging Face hub ids as model sources (needs network)."
    )
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API binds to.")
    workers: int = Field(
        1, ge=0, description="Worker processes started by `moecarve serve` (0: API only)."
    )
    worker_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per worker (default: torch's choice); split the cores among workers.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, description="How often an idle worker looks for queued jobs."
    )
    heartbeat_s: float = Field(
        2.0, gt=0, description="How often a busy worker marks its job alive."
    )
    lost_after_s: float = Field(
        30.0,
        gt=0,
        description="A running job whose heartbeat is older than this is failed as WorkerLost.",
    )
    cancel_grace_s: float = Field(
        30.0,
        gt=0,
        description="A job still cancelling after this long has its worker killed (and restarted).",
    )
    max_log_events: int = Field(500, ge=0, description="Log-line events kept per job.")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as e:
                raise SettingsError(
                    f"cannot read api_keys_file {self.api_keys_file}: {e.strerror}"
                ) from e
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    def check_access(self) -> None:
        """Refuse to serve with no way to authenticate unless open access was chosen explicitly."""
        if not self.open_access and not self.keys():
            raise SettingsError(
                "no API keys configured: set MOECARVE_API_KEYS (or MOECARVE_API_KEYS_FILE), "
                "or MOECARVE_OPEN_ACCESS=1 (or --open) for local use without keys"
            )
        if any(len(k) < 16 for k in self.keys()):
            raise SettingsError("API keys must be at least 16 characters long")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``MOECARVE_*`` variables, then ``overrides`` (None values ignored)."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if name == "allowed_roots":
                data[name] = [p for p in raw.split(os.pathsep) if p]
            elif name == "api_keys":
                data[name] = [k.strip() for k in raw.split(",") if k.strip()]
            else:
                data[name] = raw
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SettingsError(f"invalid service settings: {e}") from e
