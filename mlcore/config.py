"""Deployment settings (``MLCORE_*`` env) and the frozen per-stage run configs built from Params.

``MLCORE_HOME`` is a folder (the embedded default) or ``s3://bucket/prefix``. ``Settings``
keeps it as given in ``home_uri``; ``store_home()`` is the storage layer over it
(``mlcore.objstore.Home``, both kinds), and ``home`` the local folder as a ``Path`` for the
stages that still write local paths. On an object-storage home ``home`` raises
``NotOnObjectStorage`` naming the calling module (never a folder literally named ``s3:``);
ingest runs there through ``store_home()``.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlcore.objstore import Home

_REPO_ROOT = Path(__file__).resolve().parents[1]


def _repo_dir(name: str) -> Path:
    """A folder of the source checkout when mlcore runs from one, else one under the cwd."""
    here = _REPO_ROOT / name
    return here if here.is_dir() else Path.cwd() / name


class StoreNotConfigured(ValueError):
    """The production profile requires a named metadata store and none is set."""


class NotOnObjectStorage(RuntimeError):
    """A stage that writes local paths ran with ``MLCORE_HOME`` on object storage."""


def _caller() -> str:
    """The module that asked ``Settings`` for a local path (for the error: which stage)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", "?"))


class Settings(BaseSettings):
    """Where Batchloop keeps its state. Read at run time, never at import."""

    model_config = SettingsConfigDict(env_prefix="MLCORE_", frozen=True, populate_by_name=True)

    # MLCORE_HOME as given (``Settings(home=...)`` too): a folder, or s3://bucket/prefix
    # (normalized; another scheme or credentials in the URI are refused).
    home_uri: str = Field(default_factory=lambda: str(Path.cwd() / ".mlcore"),
                          validation_alias="MLCORE_HOME")
    database_url: str | None = None
    # The production profile: the metadata store must be named (MLCORE_DATABASE_URL, or in a
    # DAG task the Airflow Connection ``mlcore_db``); never the private SQLite under ``home``
    # (a worker writing to a store nobody else reads is a split brain).
    require_database: bool = False
    problems_dir: Path = Field(default_factory=lambda: _repo_dir("problems"))
    feature_repo: Path = Field(default_factory=lambda: _repo_dir("feature_repo"))
    # An alternative feature_store.yaml (e.g. deploy/feature_store.postgres.yaml); None: the one
    # in ``feature_repo``. The definitions always come from ``feature_repo``.
    feast_config: Path | None = None
    # A local folder for what cannot live in a bucket when MLCORE_HOME is s3://...: Feast's
    # embedded registry and SQLite online store (``feast_dir``). Unused with a folder home
    # (``<home>/feast``) and with server Feast stores (MLCORE_FEAST_CONFIG).
    local_dir: Path | None = None
    # Bounded waits on the metadata store, in seconds (0 disables one). A database that accepts
    # TCP but never answers must fail a command, not hold an Airflow slot and lease forever.
    # connect: establishing a connection (libpq counts whole seconds, at least 2).
    db_connect_timeout: float = Field(10.0, ge=0)
    # statement: one SQL statement on PostgreSQL (server-side ``statement_timeout``).
    db_statement_timeout: float = Field(300.0, ge=0)
    # lock: waiting for another transaction's lock (PostgreSQL ``lock_timeout``, SQLite busy
    # timeout; SQLite needs a positive wait, so 0 there means "fail at once").
    db_lock_timeout: float = Field(30.0, ge=0)

    # The streaming engine (``mlcore stream``): Redis with append-only persistence in production.
    stream_url: str = "redis://127.0.0.1:6379/0"
    # Airflow's REST API, told when the stream service seals a batch (None: not told; the
    # backlog sweep then nudges the batch). Credentials: MLCORE_AIRFLOW_USER/_PASSWORD in the
    # environment, never in settings output.
    airflow_url: str | None = None
    _store: Home | None = PrivateAttr(default=None)

    def __init__(self, home: str | Path | None = None, **values: Any) -> None:
        if home is not None:  # the field is ``home_uri``; ``home`` stays the keyword
            values["home_uri"] = home
        super().__init__(**values)

    @field_validator("home_uri", mode="before")
    @classmethod
    def _home_uri(cls, value: Any) -> str:
        text = str(value)  # a Path of an S3 URI reads "s3:/bucket/..."; Home.of mends it
        if "://" not in text and not text.startswith("s3:/"):
            return str(Path(text))  # a folder: exactly as a Path setting made it
        return Home.of(text).uri()

    @property
    def home_is_local(self) -> bool:
        """Is ``MLCORE_HOME`` a folder (not object storage)?"""
        return not self.home_uri.startswith("s3://")

    @property
    def home(self) -> Path:
        """The home folder, for stages that write local paths.

        Raises:
            NotOnObjectStorage: ``MLCORE_HOME`` is ``s3://...``; names the calling module.
        """
        if self.home_is_local:
            return Path(self.home_uri)
        raise NotOnObjectStorage(
            f"not supported yet on object storage: {_caller()} (MLCORE_HOME is "
            f"{self.home_uri}; ingest runs there, this stage still needs a local folder)")

    def store_home(self) -> Home:
        """The storage layer over ``MLCORE_HOME`` (a folder or S3), one per settings object."""
        if self._store is None:
            self._store = Home.of(self.home_uri)
        return self._store

    @property
    def feast_dir(self) -> Path:
        """The local folder of Feast's embedded registry and online store (``${MLCORE_HOME}/feast``
        in ``feature_repo/feature_store.yaml``): ``<home>/feast``, or on an object-storage home
        ``<MLCORE_LOCAL_DIR>/feast``.

        Raises:
            NotOnObjectStorage: an object-storage home without ``MLCORE_LOCAL_DIR``.
        """
        if self.home_is_local:
            return self.home / "feast"
        if self.local_dir is None:
            raise NotOnObjectStorage(
                f"MLCORE_HOME is on object storage ({self.home_uri}): Feast's embedded registry "
                "and online store need a local folder (MLCORE_LOCAL_DIR), or name server stores "
                "(MLCORE_FEAST_CONFIG)")
        return self.local_dir / "feast"

    @field_validator("feast_config", "airflow_url", "local_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        # `MLCORE_FEAST_CONFIG=` (e.g. compose's ${MLCORE_FEAST_CONFIG:-}) means the default.
        return None if isinstance(value, str) and not value.strip() else value


    @property
    def feast_config_file(self) -> Path:
        """The ``feature_store.yaml`` Feast opens: ``MLCORE_FEAST_CONFIG`` or the repo's own."""
        return self.feast_config or self.feature_repo / "feature_store.yaml"

    @property
    def db_url(self) -> str:
        """The metadata store URL: ``MLCORE_DATABASE_URL`` or SQLite under ``home``.

        Remembers that this database's paths are relative to ``home`` (``home_of``).

        Raises:
            StoreNotConfigured: ``require_database`` is set and no URL is.
        """
        if self.require_database and not self.database_url:
            raise StoreNotConfigured(
                "MLCORE_REQUIRE_DATABASE is set but no metadata store is named: set "
                "MLCORE_DATABASE_URL (or, in Airflow tasks, the mlcore_db connection); the "
                "SQLite fallback under MLCORE_HOME is refused")
        if not self.database_url and not self.home_is_local:
            raise StoreNotConfigured(
                f"MLCORE_HOME is on object storage ({self.home_uri}): name the metadata store "
                "(MLCORE_DATABASE_URL, or in Airflow tasks the mlcore_db connection); the SQLite "
                "fallback cannot live in a bucket")
        url = self.database_url or f"sqlite:///{self.home / 'mlcore.db'}"
        _HOMES[url] = self.home if self.home_is_local else None
        return url

    def partition(self, area: str, problem: str, batch_id: str | None = None) -> Path:
        """``<home>/<area>/problem=<p>[/batch=<id>]``: the one layout every stage writes."""
        path = self.home / area / f"problem={problem}"
        return path / f"batch={batch_id}" if batch_id is not None else path

    def partition_uri(self, area: str, problem: str, batch_id: str | None = None) -> str:
        """``partition`` as a URI of ``store_home()`` (a folder or S3)."""
        tail = [f"batch={batch_id}"] if batch_id is not None else []
        return self.store_home().uri(area, f"problem={problem}", *tail)


_HOMES: dict[str, Path | None] = {}


def home_of(url: str) -> Path | None:
    """The ``MLCORE_HOME`` folder the store at ``url`` keeps its paths relative to: the home of
    the settings that last handed out this URL in this process, else the process settings'
    home; None for an object-storage home (its URIs are stored whole)."""
    if url in _HOMES:
        return _HOMES[url]
    settings = get_settings()
    return settings.home if settings.home_is_local else None


@cache
def get_settings() -> Settings:
    """The process-wide settings, resolved on first use."""
    return Settings()


class _RunConfig(BaseModel):
    """A stage's run knobs: built from the DAG's Params, unknown keys ignored, bounds re-checked."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> Self:
        """Build the config from an Airflow ``params`` mapping (or any plain dict)."""
        return cls.model_validate({k: v for k, v in (params or {}).items() if v is not None})


class IngestConfig(_RunConfig):
    """Knobs of ``ingest_batch``."""

    batch_id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1)


class TrainConfig(_RunConfig):
    """Knobs of ``retrain_model``."""

    until_batch: str | None = Field(None, max_length=64)
    algorithm: str = "auto"
    validation_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    random_state: int = Field(0, ge=0, le=2**31 - 1)
    max_train_rows: int = Field(1_000_000, ge=100, le=50_000_000)
    reason: str = Field("", max_length=500)
