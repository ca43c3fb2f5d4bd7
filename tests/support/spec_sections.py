"""A problem spec with some top-level sections replaced, validated again (a test's variant of
the census spec)."""

from __future__ import annotations

from typing import Any

from mlcore.problems import ProblemSpec


def variant(spec: ProblemSpec, **changes: Any) -> ProblemSpec:
    """The census spec with some top-level sections replaced (validated again)."""
    return ProblemSpec.model_validate({**spec.model_dump(), **changes})
