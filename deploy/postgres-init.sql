-- Batchloop: extra databases on the stack's PostgreSQL (docker-compose.yaml mounts this file into
-- /docker-entrypoint-initdb.d). The postgres image runs it once, as POSTGRES_USER, only when the
-- data volume is empty; on an existing volume create them by hand (see deploy/README.md).
--   airflow  created by the image itself (POSTGRES_DB): Airflow metadata + Celery results
--   mlcore   mlcore's metadata store (MLCORE_DATABASE_URL)
--   feast    the Feast SQL registry and PostgreSQL online store (FEAST_PG_DATABASE;
--            deploy/feature_store.postgres.yaml, feature_store.redis.yaml)
CREATE DATABASE mlcore;
CREATE DATABASE feast;
