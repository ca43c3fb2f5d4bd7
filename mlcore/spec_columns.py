"""The columns a spec declares: the entity, the event time, the target and the features, and
how a label or category is matched whatever its scalar type (``label_key``)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class SpecModel(BaseModel):
    """A spec section: frozen, and an unknown key is an error (a typo never passes silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Entity(SpecModel):
    name: str
    key: str
    dtype: Literal["int64", "string"] = "int64"


class EventTime(SpecModel):
    """How a row's event time is derived: a timestamp column, or the end of a year column."""

    column: str
    kind: Literal["timestamp", "year_end"] = "timestamp"


Label = bool | int | str
TIME_PARTS = ("year", "month", "day", "day_of_week", "day_of_year", "hour", "minute",
              "is_weekend")
# YAML 1.1 reads yes/no/on/off as booleans: a label or category written that way is matched
# against the data's text forms of a boolean as well (``mlcore.columns.vocabulary_codes``).


def label_key(value: Any) -> str:
    """The canonical text of a scalar label or category, whatever its type: ``"Organic"`` stays
    itself (stripped), ``3``, ``3.0`` and ``numpy.int64(3)`` are ``"3"``, ``True`` is ``"true"``
    (pure Python: specs load without numpy)."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalars
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value == int(value) else repr(value)
    return str(value).strip()


class Target(SpecModel):
    """What is predicted. ``binary``: two labels, ``positive`` names the positive one (default
    1 / true); ``classes`` may list both. ``multiclass``: ``classes`` declared, or learnt from the
    first labelled batch and then fixed. ``regression``: a float."""

    name: str
    kind: Literal["binary", "multiclass", "regression"] = "binary"
    positive: Label | None = None
    classes: tuple[Label, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Target:
        if self.kind == "regression" and (self.positive is not None or self.classes):
            raise ValueError(f"target {self.name!r}: a regression target has no positive label "
                             "or classes")
        if self.kind == "multiclass" and self.positive is not None:
            raise ValueError(f"target {self.name!r}: positive is for binary targets only")
        if self.classes is not None:
            keys = [label_key(c) for c in self.classes]
            if len(set(keys)) != len(keys):
                raise ValueError(f"target {self.name!r}: classes repeat a label")
            want = 2 if self.kind == "binary" else None
            if want and len(keys) != want or len(keys) < 2:
                raise ValueError(f"target {self.name!r}: a {self.kind} target needs "
                                 f"{'exactly 2' if want else 'at least 2'} classes, "
                                 f"got {len(keys)}")
            if self.positive is not None and label_key(self.positive) not in keys:
                raise ValueError(f"target {self.name!r}: positive {self.positive!r} is not one "
                                 f"of the classes {list(self.classes)}")
        return self

    @property
    def is_classification(self) -> bool:
        """Binary or multiclass."""
        return self.kind != "regression"


class Feature(SpecModel):
    """One input column. ``numeric``: int or float, optional ``min``/``max``. ``categorical``:
    ``values`` (strings, ints or bools) is the vocabulary; a value outside it quarantines its row
    unless ``unknown: other`` (then it reaches the model as an unknown category). ``boolean``:
    true/false (also 1/0, yes/no as text). ``timestamp``: parsed (ISO 8601 text or a timestamp
    column, naive = UTC) and expanded into ``parts``, each a numeric model feature
    ``<name>_<part>``. ``nullable: true``: a missing value is data, not a bad row."""

    name: str
    kind: Literal["numeric", "categorical", "boolean", "timestamp"]
    min: float | None = None
    max: float | None = None
    values: tuple[bool | int | str, ...] | None = None
    unknown: Literal["quarantine", "other"] = "quarantine"
    nullable: bool = False
    parts: tuple[Literal[TIME_PARTS], ...] | None = None  # type: ignore[valid-type]
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.kind == "categorical":
            if not self.values:
                raise ValueError(f"categorical feature {self.name!r} needs its allowed values")
            types = {_value_type(v) for v in self.values}
            if len(types) > 1:
                raise ValueError(f"categorical feature {self.name!r}: values mix types "
                                 f"{sorted(types)}; write them all as text (quoted) or all "
                                 "as numbers")
            if len({label_key(v) for v in self.values}) != len(self.values):
                raise ValueError(f"categorical feature {self.name!r}: values repeat")
        elif self.values is not None or self.unknown != "quarantine":
            raise ValueError(f"feature {self.name!r}: values/unknown are for categorical "
                             f"features, not {self.kind}")
        if self.kind != "numeric" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max are for numeric features")
        if self.kind == "timestamp":
            if not self.parts:
                raise ValueError(f"timestamp feature {self.name!r} needs its parts (any of "
                                 f"{', '.join(TIME_PARTS)})")
            if len(set(self.parts)) != len(self.parts):
                raise ValueError(f"timestamp feature {self.name!r}: parts repeat")
        elif self.parts is not None:
            raise ValueError(f"feature {self.name!r}: parts are for timestamp features")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self

    @property
    def value_type(self) -> str:
        """How the column is stored: ``float`` (numeric, timestamp parts), ``int``, ``str`` or
        ``bool`` (categorical by its vocabulary; boolean), ``timestamp`` (the raw timestamp)."""
        if self.kind == "numeric":
            return "float"
        if self.kind == "boolean":
            return "bool"
        if self.kind == "timestamp":
            return "timestamp"
        return _value_type((self.values or ("",))[0])

    @property
    def model_columns(self) -> list[str]:
        """The model (and Feast) feature columns this input yields."""
        if self.kind == "timestamp":
            return [f"{self.name}_{p}" for p in self.parts or ()]
        return [self.name]


def _value_type(value: bool | int | str) -> str:
    return "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "str"
