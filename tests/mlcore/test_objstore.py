"""mlcore.objstore against a real S3 API server (moto's standalone server, a separate process on
loopback, started once for the module) and a local folder: the same calls, the same results."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from s3_server import SECRET_KEY, S3Server, free_port, s3_server

from mlcore.config import Settings
from mlcore.objstore import Home, StorageError

ROOT = Path(__file__).resolve().parents[2]
TABLE = pa.table({"k": [1, 2, 3], "f": [0.5, 1.5, None], "s": ["a", "é", "c"]})


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def s3_env(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var, value in server.env.items():
        monkeypatch.setenv(var, value)
    return server


@pytest.fixture(params=["local", "s3"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    if request.param == "local":
        return Home.of(tmp_path / "home")
    srv = request.getfixturevalue("s3_env")
    return Home.of(srv.uri(f"home-{uuid.uuid4().hex[:8]}"))


def test_write_read_list_remove(home: Home, tmp_path: Path) -> None:
    a, b = home.uri("raw", "problem=p", "a.txt"), home.uri("raw", "problem=p", "sub", "b.bin")
    with home.open(a, "wb") as fh:
        fh.write(b"alpha")
    local = tmp_path / "b.bin"
    local.write_bytes(b"\x00\x01beta")
    home.put_file(local, b)
    assert home.exists(a) and home.exists(b) and not home.exists(home.uri("nope"))
    with home.open(a) as fh:
        assert fh.read() == b"alpha"
    assert home.ls(home.uri("raw", "problem=p")) == [a, home.uri("raw", "problem=p", "sub")]
    assert home.find(home.uri("raw")) == [a, b]
    assert home.size(b) == 6
    home.get_file(b, tmp_path / "back" / "b.bin")
    assert (tmp_path / "back" / "b.bin").read_bytes() == b"\x00\x01beta"
    home.rm(a)
    home.rm(a)  # a missing file is no error
    assert home.find(home.uri("raw")) == [b]
    home.rm(home.uri("raw"), recursive=True)
    assert home.find(home.uri()) == [] and home.ls(home.uri("raw")) == []
    with pytest.raises(FileNotFoundError, match="nope"):
        home.open(home.uri("nope"))


@pytest.mark.parametrize("native", [True, False], ids=["pyarrow-s3", "fsspec-handler"])
def test_parquet_round_trip_through_pyarrow(home: Home, native: bool) -> None:
    fs = home.pyarrow_filesystem(native)
    target = home.uri("features", "problem=p", "batch=1", "part-0.parquet")
    if home.is_local:
        Path(target).parent.mkdir(parents=True)
    pq.write_table(TABLE, home.path(target), filesystem=fs)
    assert pq.read_table(home.path(target), filesystem=fs).equals(TABLE)
    assert home.parquet_rows(target) == 3
    dataset = ds.dataset(home.path(home.uri("features", "problem=p")), filesystem=fs,
                         format="parquet", partitioning="hive")
    assert dataset.to_table().num_rows == 3


def test_sha256_is_hashlib_of_the_bytes(home: Home) -> None:
    data = os.urandom((5 << 20) // 2)  # 2.5 MiB: several streamed chunks
    target = home.uri("artifacts", "model.bin")
    with home.open(target, "wb") as fh:
        fh.write(data)
    assert home.sha256(target) == hashlib.sha256(data).hexdigest()
    with home.publish(home.uri("artifacts", "v1"), parquet_only=False) as attempt:
        with attempt.open("model.bin") as sink:
            sink.write(data[:1000])
            sink.write(memoryview(data)[1000:])
    assert attempt.record == {"model.bin": {"bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}}
    assert home.sha256(attempt.location + "/model.bin") == hashlib.sha256(data).hexdigest()


def _publish(home: Home, partition: str, table: pa.Table) -> tuple[str, dict]:
    with home.publish(partition) as attempt:
        with attempt.open("part-0.parquet") as sink:  # hashed on the way out
            pq.write_table(table, sink)
        pq.write_table(table.slice(0, 1), home.path(attempt.uri("part-1.parquet")),
                       filesystem=home.pyarrow_filesystem())  # hashed from the store
    return attempt.location, attempt.record


def _crash_mid_publish(home: Home, partition: str) -> None:
    """Another process writes a file of an attempt and dies (no cleanup, no commit)."""
    code = textwrap.dedent(f"""
        import os
        from mlcore.objstore import Home
        home = Home.of({home.uri()!r})
        with home.publish({partition!r}) as attempt:
            with attempt.open("part-0.parquet") as sink:
                sink.write(b"PAR1 half a file")
            os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr


def test_a_crash_before_commit_is_invisible_and_swept(home: Home) -> None:
    partition = home.uri("features", "problem=p", "batch=7")
    committed, record = _publish(home, partition, TABLE)  # the one the database commits
    assert record["part-0.parquet"]["rows"] == 3 and record["part-1.parquet"]["rows"] == 1
    if home.is_local:
        assert committed == partition  # staging dir renamed into place, as today
    _crash_mid_publish(home, partition)  # e.g. a retry on another worker, killed
    leftovers = [a for a in home.attempts(partition) if a != committed]
    assert len(leftovers) == 1 and home.find(leftovers[0])  # its half file is there
    # a reader following the committed location sees exactly the committed files
    assert home.record(committed) == record
    fs = home.pyarrow_filesystem()
    assert ds.dataset(home.path(committed), filesystem=fs, format="parquet").count_rows() == 4
    if home.is_local:  # pyarrow's directory reads skip the dot-named staging leftover
        problem_files = ds.dataset(home.path(home.uri("features", "problem=p")), filesystem=fs,
                                   format="parquet").files
        assert problem_files and not any("/." in f for f in problem_files)
    else:  # S3: nothing at all under the partition's prefix (dask reads dot folders too)
        assert home.find(home.uri("features")) == []
        assert committed.startswith(home.uri(".attempts", "features", "problem=p", "batch=7"))
    assert home.sweep_attempts(partition, keep=[committed]) == leftovers
    assert home.attempts(partition) == [committed] and home.record(committed) == record
    # a failure inside the block removes what the attempt wrote
    with pytest.raises(RuntimeError), home.publish(home.uri("features", "problem=p",
                                                            "batch=8")) as attempt:
        with attempt.open("part-0.parquet") as sink:
            sink.write(b"x")
        raise RuntimeError("validation failed")
    assert home.attempts(home.uri("features", "problem=p", "batch=8")) == []


def test_a_writer_killed_mid_upload_leaves_no_parts_after_the_sweep(s3_env: S3Server) -> None:
    """A large file goes up in parts (s3fs: a multipart upload past its block size); a writer
    killed in the middle leaves no object -- nothing to list or remove -- but stored parts.
    The sweep aborts the unfinished uploads under the partition's attempts, and only there."""
    home = Home.of(s3_env.uri(f"mpu-{uuid.uuid4().hex[:6]}"))
    partition, other = home.uri("curated", "problem=p", "batch=1"), home.uri("curated", "x")
    code = textwrap.dedent(f"""
        import os
        from mlcore.objstore import Home
        home = Home.of({home.uri()!r})
        sink = home.open(home.attempt({partition!r}).uri("part-0.parquet"), "wb")
        sink.write(os.urandom(1 << 20) * 51)  # past the 50 MiB block: a part is sent
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    bucket = s3_env.bucket
    home.filesystem.call_s3("create_multipart_upload", Bucket=bucket, Key=home.path(
        home.attempt(other).uri("part-0.parquet"))[len(bucket) + 1:])  # another partition's

    def uploads() -> list[str]:
        listed = home.filesystem.call_s3("list_multipart_uploads", Bucket=bucket)
        return sorted(u["Key"].split("/")[-4] for u in listed.get("Uploads", [])
                      if u["Key"].startswith(home.path(home.uri())[len(bucket) + 1:]))

    assert home.attempts(partition) == [] and uploads() == ["curated", "problem=p"]
    home.sweep_attempts(partition)
    assert uploads() == ["curated"]  # the other partition's upload is not this sweep's


def test_credentials_never_shown(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home.of(s3_env.uri("creds"))
    assert SECRET_KEY not in repr(home) and SECRET_KEY not in str(home)
    assert s3_env.endpoint in repr(home)
    home.filesystem  # noqa: B018 - built from the environment, nothing stored
    assert SECRET_KEY not in repr(home.filesystem.storage_options) + repr(vars(home))
    with pytest.raises(FileNotFoundError) as missing:
        home.open(home.uri("absent.parquet"))
    assert SECRET_KEY not in str(missing.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + SECRET_KEY)
    with pytest.raises(ValueError) as in_uri:
        Home.of(f"s3://key:{SECRET_KEY}@bucket/prefix")
    assert SECRET_KEY not in str(in_uri.value)
    monkeypatch.setenv("MLCORE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLCORE_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as failed:
        Home.of(s3_env.uri("creds")).ls(s3_env.uri("creds"))
    assert SECRET_KEY not in str(failed.value) and SECRET_KEY not in repr(failed.value)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback port that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_a_bad_endpoint_fails_fast_naming_the_uri(s3_env: S3Server, blackhole: str, where: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if where == "refused" else blackhole
    monkeypatch.setenv("MLCORE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("MLCORE_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("MLCORE_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("MLCORE_S3_MAX_ATTEMPTS", "1")
    home = Home.of("s3://nowhere/prefix")
    target = home.uri("curated", "part-0.parquet")
    for call in (lambda: home.ls(home.uri("curated")), lambda: home.sha256(target),
                 lambda: home.put_file(__file__, target)):
        started = time.monotonic()
        with pytest.raises(StorageError) as failed:
            call()
        assert time.monotonic() - started < 8
        assert "s3://nowhere/prefix/curated" in str(failed.value)
        assert endpoint in str(failed.value)


def test_an_s3_home_from_settings_and_bad_uris() -> None:
    settings = Settings(home="s3://bucket/some/prefix/")
    assert settings.home_uri == "s3://bucket/some/prefix" and not settings.home_is_local
    assert Settings(home=Path("s3://bucket/some/prefix")).home_uri == settings.home_uri
    home = settings.store_home()
    assert home is settings.store_home() and Home.of(Path("s3://bucket/some/prefix")).uri() == \
        home.uri()
    assert home.uri("curated", "problem=p") == "s3://bucket/some/prefix/curated/problem=p"
    assert home.path(home.uri("x")) == "bucket/some/prefix/x"
    assert Home.of("/tmp/h/").uri("a") == "/tmp/h/a" and Home.of("file:///tmp/h").is_local
    for bad in ("gs://bucket/p", "s3:///p"):
        with pytest.raises(ValueError):
            Home.of(bad)


def test_feast_file_source_reads_s3_with_the_endpoint(s3_env: S3Server) -> None:
    """Feast's FileSource over s3://: pyarrow's S3 client needs ``s3_endpoint_override`` (it
    does not read AWS_ENDPOINT_URL); the dask reader (historical retrieval) honours either."""
    from feast import FileSource
    from feast.infra.offline_stores.dask import _read_datasource

    home = Home.of(s3_env.uri(f"feast-{uuid.uuid4().hex[:6]}"))
    partition = home.uri("features", "problem=p", "batch=1")
    committed, _ = _publish(home, partition, TABLE)
    _publish(home, partition, TABLE.slice(0, 2))  # written, never committed
    fs, path = FileSource.create_filesystem_and_path(committed, s3_env.endpoint)
    assert path == home.path(committed)
    assert pq.ParquetDataset(path, filesystem=fs).read().num_rows == 4
    source = FileSource(name="p_source", path=committed, timestamp_field="event_timestamp",
                        s3_endpoint_override=s3_env.endpoint)
    assert len(_read_datasource(source, None).compute()) == 4  # the committed files only
    # why attempts live outside the partition: Feast's dask reader reads a dot-named folder
    probe = home.uri("probe")
    pq.write_table(TABLE, home.path(f"{probe}/.hidden/part-0.parquet"), filesystem=fs)
    dotted = FileSource(name="probe", path=probe, timestamp_field="event_timestamp",
                        s3_endpoint_override=s3_env.endpoint)
    assert len(_read_datasource(dotted, None).compute()) == 3
