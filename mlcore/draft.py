"""Draft a problem spec from a sample file (``mlcore problem draft FILE --target --key --time``).

Three pure steps: ``profile_frame`` (``mlcore.data.profile``, the target by
``mlcore.data.target_profile``) reads a frame into a ``Profile`` (each column's kind and
vocabulary or range, the target's kind and a naive baseline), ``spec_dict`` turns that into the
data of a spec, ``render_yaml`` into commented YAML that reads like ``problems/*.yaml``.
``draft_yaml`` runs all three and checks that the text loads back to the same spec.
``read_sample`` is the one I/O helper; the CLI reads the file and writes the draft.

How columns are read (each rule keeps every row of the sample valid under the draft):

* entity key: ``int64`` when the key column holds integers, else ``string``;
* event time: ``year_end`` when the column holds plain years (never a feature: a year is constant
  within a batch); ``timestamp`` for ISO 8601 text or a timestamp column. A timestamp event time
  is also a feature, with those of ``hour`` and ``day_of_week`` that vary in the sample: the
  cycles a batch spans. Not ``month`` or ``year``: near-constant within a batch, they would only
  extrapolate on later batches;
* boolean: bool columns, and text of only true/false. timestamp: timestamp columns and ISO 8601
  date text, parts ``hour``, ``day_of_week``, ``month`` (those constant in the sample dropped);
* categorical: pandas category columns, integer columns with few distinct values (at most 20 and
  at most 5 % of the rows), other text. The vocabulary is every value seen, sorted, in its own
  type (text quoted, so YAML never reads ``"yes"`` or ``"on"`` as a boolean). Text with more than
  200 distinct values, or more than 20 that are over half of its rows (free text, IDs), is left
  out (then ``validation.extra_columns: ignore``);
* numeric: other numbers (float columns stay numeric even when whole). Bounds: the seen range
  widened by 10 % of it on each side, rounded outwards; ``min: 0`` when every seen value is >= 0;
* ``nullable: true`` wherever a value was missing (None, NaN, blank text).

The target: two distinct labels are ``binary`` (``positive`` 1/true/yes when present, else the
minority label); up to 20 labels that are not floats ``multiclass`` (text labels: any number);
otherwise numbers are ``regression``. The promotion floor is a naive baseline on the sample.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlcore.data.profile import MARGIN, FeatureDraft, Profile, profile_frame, slice_column
from mlcore.data.target_profile import BINARY_FLOOR, TargetDraft, significant
from mlcore.problems import ProblemSpec
from mlcore.spec_rules import DEFAULT_METRIC, METRICS_BY_KIND

NOTE_COLUMN = 26  # trailing comments start here when the line is shorter


def read_sample(path: Path) -> pd.DataFrame:
    """The sample as ingestion reads it (parquet, or CSV with pandas' default parsing).

    Raises:
        ValueError: not a parquet or CSV file, or not readable as one (the message names it).
    """
    if path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise ValueError(f"{path}: unsupported file type {path.suffix or '(none)'!r} "
                         "(parquet or csv)")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow, OSError, parser errors: all mean "unreadable"
        kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
        raise ValueError(f"{path} is not a readable {kind} file "
                         f"({type(exc).__name__}: {exc})") from exc


def default_name(path: Path | str) -> str:
    """The file stem made a valid problem name (``^[a-z][a-z0-9_]{0,47}$``)."""
    stem = re.sub(r"[^a-z0-9]+", "_", Path(path).stem.lower()).strip("_")
    stem = re.sub(r"^[^a-z]+", "", stem)
    return (stem or "problem")[:48].rstrip("_") or "problem"


CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "logistic_regression": {
            "estimator": "sklearn.linear_model.LogisticRegression", "preprocessing": "one_hot",
            "params": {"max_iter": 500}, "search": {"C": [0.1, 1.0]}},
        "hist_gradient_boosting": {
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "preprocessing": "ordinal", "params": {"max_iter": 200, "max_leaf_nodes": 31},
            "search": {"learning_rate": [0.05, 0.1]}},
    },
    "regression": {
        "ridge": {"estimator": "sklearn.linear_model.Ridge", "preprocessing": "one_hot",
                  "search": {"alpha": [0.1, 1.0, 10.0]}},
        "hist_gradient_boosting": {
            "estimator": "sklearn.ensemble.HistGradientBoostingRegressor",
            "preprocessing": "ordinal", "params": {"max_iter": 200, "max_leaf_nodes": 31},
            "search": {"learning_rate": [0.05, 0.1]}},
    },
}
STAGES_WITH_DEADLINES = ("ingest_batch", "materialize_features", "score_batch", "monitor_model",
                         "ingest_labels")


def spec_dict(p: Profile) -> dict[str, Any]:
    """The draft as spec data (``ProblemSpec.model_validate`` accepts it)."""
    kind = p.target.kind
    metric = DEFAULT_METRIC[kind]
    family = "regression" if kind == "regression" else "classification"
    tolerance = metric_tolerance(p.target)
    return {
        "name": p.name,
        "description": f"DRAFT from {p.source}: {kind} target {p.target.name}. Review it.",
        "entity": {"name": "record", "key": p.key, "dtype": p.key_dtype},
        "event_time": {"column": p.time, "kind": p.time_kind},
        "target": _target_dict(p.target),
        "features": [_feature_dict(f) for f in p.features],
        "feature_ttl_days": 400,
        "metric": {"name": metric, "direction": METRICS_BY_KIND[kind][metric]},
        "algorithms": {n: dict(c) for n, c in CANDIDATES[family].items()},
        "promotion": _promotion(p, tolerance),
        "validation": {"max_bad_row_share": 0.05, "critical_rules": ["event_time_in_future"],
                       "extra_columns": "ignore" if p.skipped else "reject",
                       "max_future_seconds": 0},
        "drift": {"drift_share": 0.5, "sample_rows": 50000, "numeric_threshold": 0.1,
                  "categorical_threshold": 0.1, "prediction_threshold": 0.1,
                  "segments": [s] if (s := slice_column(p.features)) else [],
                  "budget_seconds": 300},
        "labels": {"maturity_days": 0, "min_rows": 500},
        "retrain": {"cooldown_days": 7, "performance_drop": tolerance, "lease_hours": 6,
                    "shadow_promotion": False},
        "alerts": {"deadline_minutes": {s: 60 for s in STAGES_WITH_DEADLINES}},
    }


def metric_tolerance(t: TargetDraft) -> float:
    """A change of the metric worth acting on (slice guardrail bound, retrain's
    ``performance_drop``): 0.05 for classification metrics, 5 % of the target's standard
    deviation (the rmse floor) for regression."""
    return 0.05 if t.kind != "regression" else max(significant(0.05 * t.baseline, 2), 1e-9)


def _target_dict(t: TargetDraft) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "kind": t.kind}
    if t.positive is not None:
        out["positive"] = t.positive
    if t.classes is not None:
        out["classes"] = list(t.classes)
    return out


def _feature_dict(f: FeatureDraft) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "kind": f.kind}
    if f.min is not None:
        out["min"] = f.min
    if f.max is not None:
        out["max"] = f.max
    if f.values is not None:
        out["values"] = list(f.values)
    if f.parts is not None:
        out["parts"] = list(f.parts)
    if f.nullable:
        out["nullable"] = True
    return out


def _promotion(p: Profile, tolerance: float) -> dict[str, Any]:
    column = slice_column(p.features)
    return {"min_metric": p.target.baseline, "min_improvement": 0.0,
            "non_inferiority_margin": 0.0, "confidence": 0.95, "bootstrap_samples": 1000,
            "seed": 0,
            "guardrails": {"slices": {column: tolerance} if column else {},
                           "min_slice_rows": 500, "min_rows_per_second": 1000},
            "require_approval": False}


# ---- YAML text -------------------------------------------------------------------------------

PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
FLOW_KEYS = {"params", "search", "slices"}  # nested mappings written on one line


def _number(x: float | int) -> str:
    """A number as YAML 1.1 reads it back as the same number (floats keep a dot)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    text = repr(float(x))
    mantissa, _, exponent = text.partition("e")
    if exponent and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def _text(value: str, quote: bool = False) -> str:
    """Text plain when YAML reads it back as itself (and ``quote`` is off), else double-quoted."""
    if not quote and PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return yaml.safe_dump(value, default_style='"', width=1 << 30).strip()


def _flow(value: Any, quote: bool = False) -> str:
    """One value in YAML flow style."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(str(k))}: {_flow(v, quote)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v, quote) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, str):
        return _text(value, quote)
    return _number(value)


def _note(line: str, note: str | None) -> str:
    """``line`` with a trailing comment (aligned like the hand-written specs)."""
    if not note:
        return line
    return f"{line.ljust(NOTE_COLUMN)} # {note}" if len(line) < NOTE_COLUMN else \
        f"{line}  # {note}"


def _comment(text: str, indent: str = "") -> list[str]:
    """``text`` as comment lines of at most 100 characters."""
    return textwrap.wrap(text, width=100, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def _block(key: str, value: Any, indent: int, path: str, notes: dict[str, str]) -> list[str]:
    """``key: value`` in block style (nested mappings too, but params/search/slices in flow
    style), each line with its note from ``notes`` (by dotted path)."""
    pad, where = "  " * indent, f"{path}{key}"
    if isinstance(value, dict) and value and key not in FLOW_KEYS:
        lines = [_note(f"{pad}{_text(key)}:", notes.get(where))]
        for k, v in value.items():
            lines += _block(str(k), v, indent + 1, f"{where}.", notes)
        return lines
    quote = key in ("positive", "classes")
    return [_note(f"{pad}{_text(key)}: {_flow(value, quote)}", notes.get(where))]


def _feature_tokens(feature: dict[str, Any]) -> list[str]:
    """A feature's flow mapping cut where a line may break (between entries and values)."""
    tokens: list[str] = []
    for k, v in feature.items():
        if k == "values":
            items = [_flow(x, quote=True) for x in v]
            items[0], items[-1] = f"values: [{items[0]}", f"{items[-1]}]"
            tokens += items if len(items) > 1 else [f"{items[0]}]"]
        else:
            tokens.append(f"{k}: {_flow(v)}")
    tokens[0], tokens[-1] = "{" + tokens[0], tokens[-1] + "}"
    return tokens


def _feature_lines(feature: dict[str, Any], width: int = 100) -> list[str]:
    """``  - {name: ..., kind: ...}``, wrapped at ``width`` (continuations indented)."""
    lines, line = [], "  - "
    for i, token in enumerate(_feature_tokens(feature)):
        piece = token if i == 0 else f", {token}"
        if i and len(line) + len(piece) + 1 > width:
            lines.append(line + ",")
            line = "     " + token
        else:
            line += piece
    return [*lines, line]


def _notes(p: Profile, spec: dict[str, Any]) -> dict[str, str]:
    """Trailing comments, by dotted path."""
    t, slices = p.target, spec["promotion"]["guardrails"]["slices"]
    notes = {
        "entity.name": "review: what one row is about (a person, an application, a sale)",
        "entity.dtype": ("the key holds integers" if p.key_dtype == "int64"
                         else "the key holds text"),
        f"target.{'positive' if t.kind == 'binary' else 'kind'}": t.note,
        "promotion.min_metric": "absolute floor: the naive baseline (see above)",
        "promotion.require_approval": "true: retrain_model waits for a human to approve",
        "drift.segments": "drift is also reported within each value of these columns",
        "retrain.performance_drop": "matured metric this far below the champion's holdout",
        "labels.maturity_days": "review: days until a row's label is final",
    }
    if slices:
        notes["promotion.guardrails.slices"] = "review: the slice column and its bound"
    if p.skipped:
        notes["validation.extra_columns"] = "the columns left out above are ignored"
    return notes


def _head_comments(p: Profile) -> dict[str, str]:
    """The comment paragraph above each section."""
    t, column = p.target, slice_column(p.features)
    return {
        "event_time": p.time_note,
        "target": _target_comment(t),
        "features": _features_comment(p),
        "validation": ("When a batch is rejected as a whole instead of publishing its valid "
                       "rows. An event time in the future means a broken export: critical."),
        "metric": f"The {t.kind} default metric (the direction is implied by the name).",
        "algorithms": ("Candidates from the library in mlcore/spec_rules.py: fixed `params` and a "
                       "small `search` grid tried on a validation slice; the run's seed sets "
                       "random_state. Linear models get one-hot categories, trees ordinal "
                       "codes."),
        "promotion": _promotion_comment(t, column),
        "drift": ("Drift of each batch against the champion's reference profile, judged by "
                  "effect size. " + (f"Segments: {column}, the best-balanced low-cardinality "
                                     "column; review." if column else "No segment column: "
                                     "no categorical has 2..10 values.")),
        "labels": "Ground truth arrives after scoring: review maturity_days for your labels.",
        "retrain": ("No schedule: a retrain is requested on drift, on a drop of the matured "
                    "metric, or by hand. Review: add `schedule: \"0 6 * * 1\"` (cron, on data "
                    "time) to retrain weekly, or `new_data_rows`."),
        "alerts": ("A run of a stage still unfinished this many minutes after it was queued "
                   "pages on-call (RUNBOOK.md). Review for your batch sizes."),
    }


def _target_comment(t: TargetDraft) -> str:
    text = {"binary": f"Two labels: binary. positive: {_flow(t.positive, True)} is the label "
                      "whose probability the model scores; review it.",
            "multiclass": "A few labels that are not floats: multiclass, classes as seen (a "
                          "later label outside them is a quarantined row).",
            "regression": "Many numbers: regression."}[t.kind]
    if t.missing:
        text += (f" {t.missing} rows of the sample have no label: validation quarantines them "
                 "(ingest such rows unlabelled, without the target column).")
    return text


def _features_comment(p: Profile) -> str:
    text = ("Kinds as read from the sample; review each. numeric: the seen range widened by "
            f"{MARGIN:.0%} of it on each side (min 0 when every value seen is >= 0); a value "
            "outside quarantines its row. categorical: every value seen; an unseen one "
            "quarantines its row (`unknown: other` lets it reach the model as an unknown "
            "category). nullable: missing values were seen (they are data, not bad rows).")
    if p.skipped:
        text += " Left out: " + "; ".join(f"{c} ({why})" for c, why in p.skipped) + "."
    return text


def _promotion_comment(t: TargetDraft, column: str | None) -> str:
    floor = {"binary": f"roc_auc {BINARY_FLOOR}, a little better than chance (0.5)",
             "multiclass": f"log_loss {t.baseline}, the loss of predicting the class prior "
                           "(its entropy on the sample): a model must do better",
             "regression": f"rmse {_number(t.baseline)}, the target's standard deviation on "
                           "the sample, what predicting the mean scores: a model must do "
                           "better"}[t.kind]
    slices = (f"Guardrail: no value of {column} may lose more than "
              f"{_number(metric_tolerance(t))} of the metric." if column else
              "No slice guardrail: no categorical has 2..10 values.")
    return (f"The blessing. Floor: {floor}. Review it: a useful model should clear it "
            f"clearly. {slices}")


def render_yaml(p: Profile, spec: dict[str, Any]) -> str:
    """The draft as commented YAML in the layout of ``problems/*.yaml``."""
    heads = _head_comments(p)
    notes = _notes(p, spec)
    out = [*_comment(f"DRAFT drawn by `mlcore problem draft` from {p.source} ({p.rows} rows, "
                     f"{p.columns} columns). Every value was read off that sample: review it "
                     "before use, above all the comments that say review. As written it loads, "
                     "and every row of the sample passes its validation."),
           f"name: {_text(spec['name'])}", f"description: {_flow(spec['description'])}", ""]
    for section, value in spec.items():
        if section in ("name", "description"):
            continue
        out += _comment(heads[section]) if section in heads else []
        if section == "features":
            out.append("features:")
            for f, d in zip(p.features, value, strict=True):
                out += _comment(f"{f.name}: {f.note}", "  ") if f.note else []
                out += _feature_lines(d)
        else:
            out += _block(section, value, 0, "", notes)
        out.append("")
    return "\n".join(out[:-1]) + "\n"


def draft_yaml(df: pd.DataFrame, *, target: str, key: str, time: str, name: str,
               source: str = "the sample") -> tuple[str, ProblemSpec]:
    """Profile ``df``, and write the draft: its YAML text and the spec it loads as.

    Raises:
        ValueError: as ``profile_frame``.
        RuntimeError: the text does not load back to the drafted spec (a bug here).
    """
    profile = profile_frame(df, target=target, key=key, time=time, name=name, source=source)
    data = spec_dict(profile)
    text = render_yaml(profile, data)
    spec = ProblemSpec.model_validate(data)
    loaded = ProblemSpec.model_validate(yaml.safe_load(text))
    if loaded.model_dump() != spec.model_dump():
        raise RuntimeError("the drafted YAML does not load back to the drafted spec")
    return text, spec
