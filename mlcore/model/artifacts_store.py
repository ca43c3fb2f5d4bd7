"""Model artifacts, reference profiles and training-set parts on an object-storage home.

A folder home keeps its own code paths (``mlcore.training``, ``mlcore.datasets``); on
``MLCORE_HOME=s3://...`` a file is written locally first (hashed there) and uploaded with one PUT
to its final, content-addressed key: an object is never half-visible, and a key names one
content (a re-upload writes the same bytes). Reads fetch the bytes once; callers check them
against the hash recorded in the database before using them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from mlcore.objstore import Home


def is_remote(uri: str) -> bool:
    """Is ``uri`` an object-storage URI (not a local path)?"""
    return uri.startswith(("s3://", "s3a://"))


def upload(home: Home, local: Path, *parts: str) -> str:
    """Copy ``local`` to ``parts`` under ``home`` (one PUT); the object's URI."""
    uri = home.uri(*parts)
    home.put_file(local, uri)
    return uri


def read_bytes(uri: str) -> bytes:
    """The whole object at ``uri``.

    Raises:
        FileNotFoundError: no such object.
        mlcore.objstore.StorageError: the read failed (names the URI).
    """
    with Home.of(uri).open(uri, "rb") as fh:
        return bytes(fh.read())


def read_parquet(uri: str) -> pd.DataFrame:
    """A parquet object read into memory."""
    return pd.read_parquet(io.BytesIO(read_bytes(uri)))


def sibling(uri: str, name: str) -> str:
    """The URI of ``name`` in the same folder as the object ``uri``."""
    return f"{uri.rsplit('/', 1)[0]}/{name}"
