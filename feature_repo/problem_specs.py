"""Reads the declared problems (``problems/*.yaml``) for the definition files; defines nothing.

Feast objects are generated per problem spec, so adding a spec adds its entity, source, view and
service with no edit here. This folder must not import ``mlcore`` (``feast apply`` executes it).
"""

import os
from pathlib import Path

import yaml
from feast import ValueType
from feast.types import Bool, Float64, Int64, String

PROBLEMS_DIR = Path(os.environ.get("MLCORE_PROBLEMS_DIR", Path(__file__).parents[1] / "problems"))
# Filled in by mlcore (absolute); the fallback matches its default for a hand-run `feast apply`.
MLCORE_HOME = Path(os.environ.get("MLCORE_HOME", Path.cwd() / ".mlcore"))

KEY_TYPES = {"int64": ValueType.INT64, "string": ValueType.STRING}
# The created-timestamp column of a problem with ``corrections: supersede``: when its batch was
# published (``mlcore.features.CREATED``). Of two rows with one key and event time, Feast keeps
# the later one: the correction.
CREATED = "batch_published_at"
VALUE_TYPES = {"float": Float64, "int": Int64, "str": String, "bool": Bool}


def feature_fields(feature):
    """(column, Feast type) of each model column of one declared feature, as mlcore stores it
    (``mlcore.spec_columns.Feature``): numeric Float64; categorical by its vocabulary's type (Int64,
    String, Bool); boolean Bool; a timestamp Float64 per declared part."""
    kind = feature["kind"]
    if kind == "timestamp":
        return [(f"{feature['name']}_{part}", Float64) for part in feature.get("parts") or ()]
    if kind == "numeric":
        return [(feature["name"], Float64)]
    if kind == "boolean":
        return [(feature["name"], Bool)]
    first = (feature.get("values") or [""])[0]
    kind = "bool" if isinstance(first, bool) else "int" if isinstance(first, int) else "str"
    return [(feature["name"], VALUE_TYPES[kind])]


def load_specs():
    """Each spec file as a plain dict, in name order."""
    return [yaml.safe_load(p.read_text()) for p in sorted(PROBLEMS_DIR.glob("*.yaml"))]


def offline_path(problem):
    """The problem's offline feature table: one parquet partition per batch under it."""
    return str(MLCORE_HOME / "features" / f"problem={problem}")


def created_column(spec):
    """The source's created-timestamp column: only for ``corrections: supersede`` (otherwise
    no two published rows share a key and event time)."""
    return CREATED if spec.get("corrections") == "supersede" else ""
