"""Where an ingest's publish attempt writes, and how it is put in place: the two homes.

``LocalTarget`` (a folder, the default): today's protocol, unchanged. The curated rows go to a
staging dir beside ``curated/problem=<p>/batch=<id>``, the raw file is copied to one beside
``raw/...``, both are renamed into place, then the manifest is committed; ``clear`` removes
what crashed runs left (staging dirs, an unpublished final dir).

``ObjectTarget`` (``MLCORE_HOME=s3://bucket/prefix``): object stores have no rename, so the
files go to attempts of ``mlcore.objstore`` -- ``<home>/.attempts/curated/problem=<p>/
batch=<id>/<tag>/part-0.parquet`` and ``<home>/.attempts/raw/problem=<p>/batch=<id>/<tag>/
<file>`` (one tag: the raw copy of a published batch is its curated location with ``raw`` for
``curated``) -- and publishing *is* the commit: the manifest's compare-and-set on its claim
token records the curated attempt's location as ``curated_uri`` (with the files' record) in the
same transaction that marks it ``published``. Readers follow committed locations only; nothing
is ever written under the partitions' own prefixes. ``clear`` (holding the batch's store lock,
after the manifest is re-staged, so a writer whose claim was taken over can no longer commit
what it finds) sweeps every attempt of the batch: a re-staged batch has no committed location.

Both fire the same failpoints at the same steps: ``ingest.mid_write`` (curation),
``ingest.after_stage_write`` (files written, nothing in place) and ``ingest.after_rename``
(everything in place -- on S3: both attempts complete -- the commit not yet made).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mlcore.config import Settings
from mlcore.data.integrity import FileSet, fingerprint
from mlcore.data.io import clear_staging, staging_dir
from mlcore.objstore import Attempt, Home
from mlcore.provenance import failpoint

CURATED_FILE = "part-0.parquet"


@dataclass
class Progress:
    """What a publish attempt is doing (to explain a failure) and whether it is committing."""

    claim: str = ""  # the manifest's claim token this attempt holds
    step: str = "staging"
    path: str | Path | None = None
    committing: bool = False  # the publish transaction started: leave what is in place

    def at(self, step: str, path: str | Path) -> None:
        self.step, self.path = step, path


@dataclass
class LocalTarget:
    """A folder home: staging dirs renamed into place (``made``: staging, then final dirs)."""

    curated: Path
    raw_dir: Path
    progress: Progress = field(default_factory=Progress)
    made: list[Path] = field(default_factory=list)
    staging: Path | None = None

    def clear(self) -> None:
        """Remove what crashed runs of this batch left."""
        self.progress.at("clearing leftovers of", self.curated)
        clear_staging(self.curated)
        clear_staging(self.raw_dir)

    def begin(self) -> Path:
        """The staging dir the curated rows are written into."""
        self.progress.at("creating the staging dir for", self.curated)
        self.staging = staging_dir(self.curated)
        self.made.append(self.staging)
        return self.staging

    @property
    def staged(self) -> Path:
        """Where the curated rows are being written (for messages)."""
        return self.staging or self.curated

    def discard(self) -> None:
        """Drop the curated rows written so far (a rejection)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def place(self, raw: Path) -> tuple[str, FileSet]:
        """Copy the raw file to its partition, rename the curated staging dir onto its final
        path; the curated location and files' record (what readers verify them against)."""
        assert self.staging is not None
        at = self.progress.at
        at("creating the staging dir for", self.raw_dir)
        raw_staging = staging_dir(self.raw_dir)
        self.made.append(raw_staging)
        at("copying the raw file to", raw_staging / raw.name)
        shutil.copy2(raw, raw_staging / raw.name)
        failpoint("ingest.after_stage_write")
        at("renaming the raw staging dir to", self.raw_dir)
        os.replace(raw_staging, self.raw_dir)
        self.made.append(self.raw_dir)
        at("renaming the curated staging dir to", self.curated)
        record = fingerprint(self.staging)
        os.replace(self.staging, self.curated)
        self.made.append(self.curated)
        failpoint("ingest.after_rename")
        return str(self.curated), record

    def remove(self, keep_placed: bool) -> None:
        """Remove what this attempt wrote; ``keep_placed``: leave the final dirs (committing:
        they may be published)."""
        for path in self.made:
            if not keep_placed or path.name.startswith(".staging-"):
                shutil.rmtree(path, ignore_errors=True)


@dataclass
class ObjectTarget:
    """An object-storage home: attempts under ``.attempts``, committed with the manifest."""

    home: Home
    curated: str  # the partitions' URIs (never written; their attempts are)
    raw_part: str
    progress: Progress = field(default_factory=Progress)
    attempts: list[Attempt] = field(default_factory=list)

    def clear(self) -> None:
        """Sweep every attempt of this batch (none is committed: the manifest is re-staged)."""
        self.progress.at("sweeping the leftover attempts of", self.curated)
        self.home.sweep_attempts(self.curated)
        self.home.sweep_attempts(self.raw_part)

    def begin(self) -> Attempt:
        """The attempt the curated rows are written into."""
        self.progress.at("starting an attempt of", self.curated)
        self.attempts.append(self.home.attempt(self.curated))
        return self.attempts[0]

    @property
    def staged(self) -> str:
        """Where the curated rows are being written (for messages)."""
        return self.attempts[0].write_to if self.attempts else self.curated

    def discard(self) -> None:
        """Drop the curated rows written so far (a rejection)."""
        for attempt in self.attempts:
            attempt.discard()

    def place(self, raw: Path) -> tuple[str, FileSet]:
        """Copy the raw file to its attempt (the curated one's tag), record both attempts; the
        curated attempt's location (what the manifest commits) and its files' record."""
        curated = self.attempts[0]
        copy = self.home.attempt(self.raw_part, tag=curated.tag)
        self.attempts.append(copy)
        self.progress.at("copying the raw file to", copy.uri(raw.name))
        copy.put_file(raw, raw.name)
        failpoint("ingest.after_stage_write")
        self.progress.at("recording the curated files of", curated.write_to)
        copy.finish(parquet_only=False)
        curated.finish()
        failpoint("ingest.after_rename")  # no rename here: complete, not committed
        return curated.location, curated.record

    def remove(self, keep_placed: bool) -> None:
        """Remove this attempt's objects; ``keep_placed``: leave finished attempts (committing:
        one may be committed; the next ingest of the batch sweeps what is not)."""
        for attempt in self.attempts:
            if not keep_placed or not attempt.location:
                attempt.discard()


Target = LocalTarget | ObjectTarget


def publish_target(settings: Settings, problem: str, batch_id: str) -> Target:
    """Where an ingest of ``batch_id`` writes: the home's folder or its object store."""
    if settings.home_is_local:
        return LocalTarget(settings.partition("curated", problem, batch_id),
                           settings.partition("raw", problem, batch_id))
    return ObjectTarget(settings.store_home(), settings.partition_uri("curated", problem, batch_id),
                        settings.partition_uri("raw", problem, batch_id))
