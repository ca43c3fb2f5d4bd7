"""The declared problems (``problems/*.yaml``) for the definition files, as mlcore validates
them; defines nothing.

Feast objects are generated per problem spec, so adding a spec adds its entity, source, view and
service with no edit here. The specs come from ``mlcore.problems`` (light: YAML and pydantic, no
data stack, no Airflow), so their defaults, column types and checks are the spec's own: an
invalid spec fails ``feast apply`` as it fails every stage.
"""

import os
from pathlib import Path

from feast import ValueType
from feast.types import Bool, Float64, Int64, String

from mlcore.problems import load_problems

PROBLEMS_DIR = Path(os.environ.get("MLCORE_PROBLEMS_DIR", Path(__file__).parents[1] / "problems"))
# Filled in by mlcore (an absolute folder, or s3://bucket/prefix); the fallback matches its
# default for a hand-run `feast apply`.
MLCORE_HOME = os.environ.get("MLCORE_HOME") or str(Path.cwd() / ".mlcore")
# The offline partitions' root: <home>/features, a folder or s3://bucket/prefix/features.
OFFLINE_ROOT = (f"{MLCORE_HOME.rstrip('/')}/features" if MLCORE_HOME.startswith("s3://")
                else str(Path(MLCORE_HOME) / "features"))

KEY_TYPES = {"int64": ValueType.INT64, "string": ValueType.STRING}
# The created-timestamp column of a problem with ``corrections: supersede``: when its batch was
# published (``mlcore.feast.store.CREATED``). Of two rows with one key and event time, Feast
# keeps the later one: the correction.
CREATED = "batch_published_at"
VALUE_TYPES = {"float": Float64, "int": Int64, "str": String, "bool": Bool}


def feature_fields(feature):
    """(column, Feast type) of each model column of one declared feature
    (``mlcore.spec_columns.Feature``), typed as mlcore stores it: a timestamp's parts are
    floats, any other column its ``value_type``."""
    kind = "float" if feature.kind == "timestamp" else feature.value_type
    return [(column, VALUE_TYPES[kind]) for column in feature.model_columns]


def load_specs():
    """Each spec, validated, in name order."""
    return list(load_problems(PROBLEMS_DIR).values())


def offline_path(problem):
    """The problem's offline feature table: one parquet partition per batch under it."""
    return f"{OFFLINE_ROOT.rstrip('/')}/problem={problem}"


def s3_endpoint():
    """The S3 endpoint for an ``s3://`` offline root (pyarrow/dask ignore AWS_ENDPOINT_URL; the
    FileSource takes it as ``s3_endpoint_override``); None for a folder or AWS itself."""
    if not OFFLINE_ROOT.startswith("s3://"):
        return None
    from mlcore.s3_client import endpoint_url

    return endpoint_url()


def created_column(spec):
    """The source's created-timestamp column: only for ``corrections: supersede`` (otherwise
    no two published rows share a key and event time)."""
    return CREATED if spec.corrections == "supersede" else ""
