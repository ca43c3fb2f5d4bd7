"""The S3 clients of ``mlcore.objstore``: s3fs (fsspec) and pyarrow's own S3 filesystem, built
from the environment only. Endpoint: ``MLCORE_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (None: AWS itself); credentials: the boto chain (environment, profile,
instance role), never a setting; waits bounded by ``MLCORE_S3_CONNECT_TIMEOUT`` /
``_READ_TIMEOUT`` / ``_MAX_ATTEMPTS`` (a dead endpoint fails a call in seconds). ``scrub`` masks
credential values in any text before it reaches an error. s3fs/pyarrow load on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs
    from fsspec import AbstractFileSystem

ENDPOINT_VARS = ("MLCORE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
BOUNDS = {"CONNECT_TIMEOUT": 5.0, "READ_TIMEOUT": 60.0, "MAX_ATTEMPTS": 2.0}


def bound(name: str) -> float:
    """``MLCORE_S3_<name>`` of the environment, else its default in ``BOUNDS``."""
    return float(os.environ.get(f"MLCORE_S3_{name}") or BOUNDS[name])


def endpoint_url() -> str | None:
    """The S3 endpoint of the environment (None: AWS itself)."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def region() -> str:
    """The region of the environment (``us-east-1`` when unset)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def scrub(text: str) -> str:
    """``text`` with every credential value of the environment masked."""
    for value in filter(lambda v: len(v) >= 4, (os.environ.get(v, "") for v in SECRET_VARS)):
        text = text.replace(value, "***")
    return text


def s3_filesystem() -> AbstractFileSystem:
    """s3fs with the endpoint and bounds of the environment; a fresh instance (fsspec's cache
    would hand back one built with another environment's credentials)."""
    import s3fs
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    session = AioSession()
    # No "Expect: 100-continue" on uploads: aiohttp's read timeout does not fire while it waits
    # for the continue, so a silent endpoint would hang every write.
    session.unregister("before-call.s3", add_expect_header)
    tries = int(bound("MAX_ATTEMPTS"))
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint_url(), session=session, skip_instance_cache=True,
        use_listings_cache=False, client_kwargs={"region_name": region()},
        config_kwargs={"connect_timeout": bound("CONNECT_TIMEOUT"),
                       "read_timeout": bound("READ_TIMEOUT"),
                       "retries": {"max_attempts": tries, "mode": "standard"}})
    fs.retries = tries  # s3fs's own loop retries on top of botocore's
    return fs


def pyarrow_s3() -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 client with the same endpoint, region and bounds."""
    import pyarrow.fs as pafs

    ep = urlsplit(endpoint_url() or "")
    extra = {"endpoint_override": ep.netloc, "scheme": ep.scheme} if ep.netloc else {}
    return pafs.S3FileSystem(
        region=region(), allow_bucket_creation=False, request_timeout=bound("READ_TIMEOUT"),
        connect_timeout=bound("CONNECT_TIMEOUT"),
        retry_strategy=pafs.AwsStandardS3RetryStrategy(int(bound("MAX_ATTEMPTS"))), **extra)
