"""One parquet source per problem: ``<problem>_source`` over its per-batch feature partitions;
with ``corrections: supersede``, their publish time breaks ties of one key and event time."""

from feast import FileSource
from problem_specs import created_column, load_specs, offline_path, s3_endpoint

SOURCES = {}
for _spec in load_specs():
    SOURCES[_spec.name] = FileSource(
        name=f"{_spec.name}_source",
        path=offline_path(_spec.name),
        timestamp_field="event_timestamp",
        created_timestamp_column=created_column(_spec),
        s3_endpoint_override=s3_endpoint(),
        description=f"engineered features of {_spec.name}, partitioned batch=<id>",
    )
    globals()[f"{_spec.name}_source"] = SOURCES[_spec.name]
