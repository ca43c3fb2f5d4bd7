"""mlcore never imports Airflow, and its light modules stay light (checked in new interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                 for p in (ROOT / "mlcore").rglob("*.py")
                 if "migrations" not in p.parts and p.stem not in {"__init__", "__main__"})
HEAVY = ["pandas", "numpy", "sklearn", "feast", "evidently", "sqlalchemy", "airflow"]


def loaded_after(*modules: str) -> set[str]:
    """Top-level package names in sys.modules after importing ``modules`` in a new process."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_module_list_is_found_on_disk():
    assert len(MODULES) >= 30 and "mlcore.problems" in MODULES and "mlcore.store.session" in MODULES


def test_importing_all_of_mlcore_does_not_import_airflow():
    loaded = loaded_after(*MODULES)
    assert "mlcore" in loaded and "pandas" in loaded  # the imports really happened
    assert "airflow" not in loaded


@pytest.mark.parametrize("module, allowed", [
    ("mlcore.problems", set()),
    ("mlcore.config", set()),
    ("mlcore.batches", set()),
    ("mlcore.cli", set()),
    ("mlcore.features", {"pandas", "numpy", "sqlalchemy"}),
    ("mlcore.monitoring", {"pandas", "numpy", "sqlalchemy"}),
    # rendering is stdlib; the data part imports when called
    ("mlcore.reports.drift_report", set()),
    # rendering needs no numpy (the plots import it when drawn); numpy stays tolerated here
    ("mlcore.reports.monitoring_page", {"numpy"}),
])
def test_light_modules_defer_heavy_imports(module, allowed):
    heavy = loaded_after(module) & set(HEAVY)
    assert heavy <= allowed, f"{module} imports {sorted(heavy - allowed)} at import time"


def test_loading_every_spec_imports_nothing_heavy():
    """DAG files load the specs at parse time: validating them must not pull in pandas/numpy."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom mlcore.problems import "
            "load_problems\nspecs = load_problems(Path('problems'))\n"
            "print(json.dumps([len(specs), sorted({m.split('.')[0] for m in sys.modules})]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    count, loaded = json.loads(out.stdout)
    assert count >= 3 and not set(loaded) & {"pandas", "numpy", "sklearn", "feast"}
