"""The stage call (``batchloop_airflow.stage.run_stage``) names mlcore functions and config models
by dotted path, so DAG files stay light at parse time; the executor names the modules it preloads.
Each path must resolve (a module moved in mlcore fails here, not in a task)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from batchloop_airflow.stage import load, plain

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "dags").glob("*.py")),
           *sorted((ROOT / "plugins" / "batchloop_airflow").glob("*.py"))]
TARGETS = sorted({m for path in SOURCES
                  for m in re.findall(r'"(mlcore(?:\.\w+)+)"', path.read_text())})


def test_the_dags_name_their_stages_by_dotted_path():
    assert "mlcore.features.materialize_batch" in TARGETS and len(TARGETS) >= 10


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_resolves(target):
    try:
        importlib.import_module(target)
    except ModuleNotFoundError:
        assert load(target) is not None


def test_plain_turns_results_into_xcom_json():
    from mlcore.backfill import PlanItem

    assert plain(PlanItem("b1", "run", "missing")) == {"batch_id": "b1", "action": "run",
                                                     "reason": "missing"}
    assert plain([PlanItem("b1", "skip", "done")])[0]["action"] == "skip"
    assert plain({"a": 1}) == {"a": 1} and plain(None) is None
