"""A problem spec with its promotion rule (and optionally its metric) changed, validated again:
shared by the tests of the pure evaluation and of the promotion stage."""

from __future__ import annotations

from mlcore.problems import ProblemSpec


def variant(spec, metric=None, **promotion) -> ProblemSpec:
    data = spec.model_dump()
    guards = {**data["promotion"]["guardrails"], **promotion.pop("guardrails", {})}
    data["promotion"] = {**data["promotion"], **promotion, "guardrails": guards}
    if metric is not None:
        data["metric"] = metric
    return ProblemSpec.model_validate(data)
