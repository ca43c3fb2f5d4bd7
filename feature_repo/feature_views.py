"""One feature view per problem: ``<problem>_fv``, the spec's features with their types."""

from datetime import timedelta

from data_sources import SOURCES
from entities import ENTITIES
from feast import FeatureView, Field
from problem_specs import feature_fields, load_specs

VIEWS = {}
for _spec in load_specs():
    VIEWS[_spec.name] = FeatureView(
        name=f"{_spec.name}_fv",
        entities=[ENTITIES[_spec.name]],
        # How long a feature row stays valid for a point-in-time join after its event time.
        ttl=timedelta(days=_spec.feature_ttl_days),
        schema=[Field(name=name, dtype=dtype) for f in _spec.features
                for name, dtype in feature_fields(f)],
        source=SOURCES[_spec.name],
        online=True,
        tags={"problem": _spec.name},
    )
    globals()[f"{_spec.name}_fv"] = VIEWS[_spec.name]
