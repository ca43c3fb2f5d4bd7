"""The one call a stage task makes: what every Batchloop DAG task used to repeat around mlcore.

``run_stage("mlcore.features.materialize_batch", problem, batch_id=b, outlet=features)``
imports the mlcore stage function when the task runs (DAG files stay light at parse time),
validates the run's Params through the stage's config model when asked, loads the problem spec,
resolves mlcore's settings from the Airflow Connection, and calls
``function(spec, **inputs, settings=settings)`` (the problem's name instead of the spec with
``by_name``) under ``fail_fast`` (bad input fails without retries). It puts the batch ID on the
outlet's asset event and returns the result as small JSON for XCom. Targets are dotted paths
(``tests/dags`` checks that each one resolves).

Light at import (stdlib + ``airflow.sdk``): every DAG file imports the package at parse time.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from airflow.sdk import Asset, get_current_context

from batchloop_airflow.connections import settings
from batchloop_airflow.tasks import fail_fast


def load(target: str) -> Any:
    """The object a dotted path names (``mlcore.features.materialize_batch``)."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def plain(result: Any) -> Any:
    """A stage result as XCom JSON: ``to_dict()`` when it has one, a dataclass as a dict, a list
    item by item; anything else as it is."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if is_dataclass(result) and not isinstance(result, type):
        return asdict(result)
    if isinstance(result, list):
        return [plain(r) for r in result]
    return result


def run_actor() -> str:
    """Who acts when a task moves an alias: ``airflow:<run_id>`` (kept in the alias history)."""
    return f"airflow:{get_current_context()['run_id']}"


def run_stage(target: str, problem: str, *, by_name: bool = False, config: str | None = None,
              params: Iterable[str] | Mapping[str, str] = (), config_arg: str | None = None,
              rebuild: Mapping[str, str] | None = None, outlet: Asset | None = None,
              log: str | None = None, **inputs: Any) -> Any:
    """Run the mlcore stage function ``target`` for ``problem`` as a task: see the module doc.

    Args:
        by_name: pass the problem's name instead of its spec (functions that need no more).
        config: the stage's config model (dotted path); the run's Params go through its
            ``from_params`` (bounds checked again; bad values fail fast).
        params: the config fields passed as inputs of the same name, or ``{input: field}``.
        config_arg: the input that receives the whole validated config.
        rebuild: ``{input: class}``: inputs that arrive as an XCom dict, rebuilt with the class's
            ``from_dict``.
        outlet: the asset whose event carries ``{"batch_id": inputs["batch_id"]}``.
        log: printed with the result's fields (each item's for a list; nothing for None).
        inputs: the function's other arguments, by name.
    """
    context = get_current_context()
    with fail_fast():
        if config is not None:
            cfg = load(config).from_params(context["params"])
            pairs = params.items() if isinstance(params, Mapping) else ((p, p) for p in params)
            inputs.update({arg: getattr(cfg, field) for arg, field in pairs})
            if config_arg is not None:
                inputs[config_arg] = cfg
        for arg, cls in (rebuild or {}).items():
            inputs[arg] = load(cls).from_dict(inputs[arg])
        from mlcore.problems import get_problem

        subject = problem if by_name else get_problem(problem)
        result = plain(load(target)(subject, **inputs, settings=settings()))
    if outlet is not None:
        context["outlet_events"][outlet].extra = {"batch_id": inputs["batch_id"]}
    if log is not None and result is not None:
        for item in result if isinstance(result, list) else [result]:
            print(log.format(**item))
    return result
