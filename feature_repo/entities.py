"""One entity per problem: ``<problem>_<entity name>``, joined on the spec's entity key."""

from feast import Entity
from problem_specs import KEY_TYPES, load_specs

ENTITIES = {}
for _spec in load_specs():
    ENTITIES[_spec.name] = Entity(
        name=f"{_spec.name}_{_spec.entity.name}",
        join_keys=[_spec.entity.key],
        value_type=KEY_TYPES[_spec.entity.dtype],
        description=f"{_spec.entity.name} of problem {_spec.name}",
    )
    globals()[f"{_spec.name}_entity"] = ENTITIES[_spec.name]
