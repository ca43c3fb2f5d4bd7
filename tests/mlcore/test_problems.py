"""Problem specs: the census spec, malformed specs, a second family, lookup by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlcore.problems import ProblemNotFound, get_problem, load_problem_file, load_problems

ROOT = Path(__file__).resolve().parents[2]
CENSUS = ROOT / "problems" / "census_employment.yaml"


def census() -> dict:
    return yaml.safe_load(CENSUS.read_text())


def write(folder: Path, stem: str, data: dict) -> Path:
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_census_spec_declares_its_columns_metric_and_algorithms(spec):
    assert spec.name == "census_employment"
    assert len(spec.features) == 16
    assert spec.numeric == ["AGEP"]
    assert len(spec.categorical) == 15 and "AGEP" not in spec.categorical
    assert spec.feature_names == ["AGEP", *spec.categorical]
    assert spec.entity.key == "id" and spec.event_time.kind == "year_end"
    assert spec.target.name == "employed"
    assert (spec.metric.name, spec.metric.direction) == ("roc_auc", "maximize")
    assert set(spec.algorithms) == {"logistic_regression", "hist_gradient_boosting"}
    assert spec.feature_view == "census_employment_fv"
    assert spec.feature_service == "census_employment_v1"


def test_every_categorical_feature_lists_its_values(spec):
    for feat in spec.features:
        if feat.kind == "categorical":
            assert feat.values and all(isinstance(v, int) for v in feat.values), feat.name


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["features"][1].pop("values"), "SCHL"),
    (lambda d: d["metric"].update(name="rmse"), "rmse"),
    (lambda d: d["metric"].update(direction="up"), "direction"),
    (lambda d: d.update(owner="someone"), "owner"),
    (lambda d: d["features"][0].update(name="employed"), "must differ"),
    (lambda d: d.update(features=[]), "features"),
    (lambda d: d["features"][0].update(kind="text"), "kind"),
    (lambda d: d["promotion"].update(confidence=1.5), "confidence"),
    (lambda d: d.pop("target"), "target"),
    (lambda d: d.update(name="Census-Employment"), "name"),
], ids=["categorical-without-values", "unknown-metric", "unknown-direction", "unknown-key",
        "feature-named-like-target", "no-features", "unknown-feature-kind", "confidence>1",
        "no-target", "bad-name"])
def test_malformed_spec_raises_value_error_naming_the_file(tmp_path, mutate, needle):
    data = census()
    mutate(data)
    path = write(tmp_path, "census_employment", data)
    with pytest.raises(ValueError) as exc:
        load_problem_file(path)
    assert str(path) in str(exc.value)
    assert needle in str(exc.value)


def test_unparseable_yaml_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_problem_file(path)


def test_a_second_spec_adds_a_second_family(tmp_path):
    write(tmp_path, "census_employment", census())
    small = census()
    small["name"] = "census_small"
    small["features"] = [f for f in small["features"] if f["name"] in {"AGEP", "SCHL", "SEX"}]
    small["promotion"]["guardrails"]["slices"] = {"SEX": 0.01}
    write(tmp_path, "census_small", small)

    specs = load_problems(tmp_path)

    assert sorted(specs) == ["census_employment", "census_small"]
    assert specs["census_small"].feature_names == ["AGEP", "SCHL", "SEX"]
    assert specs["census_small"].feature_view == "census_small_fv"
    assert len(specs["census_employment"].features) == 16
    assert get_problem("census_small", tmp_path).categorical == ["SCHL", "SEX"]


def test_a_slice_guardrail_must_name_a_categorical_feature(tmp_path):
    spec = census()
    spec["promotion"]["guardrails"]["slices"] = {"AGEP": 0.01}
    with pytest.raises(ValueError, match=r"slice guardrails on \['AGEP'\]"):
        load_problem_file(write(tmp_path, "census_employment", spec))


def test_promotion_needs_at_least_1000_bootstrap_resamples(tmp_path):
    spec = census()
    spec["promotion"]["bootstrap_samples"] = 200
    with pytest.raises(ValueError, match="bootstrap_samples"):
        load_problem_file(write(tmp_path, "census_employment", spec))


def test_load_problems_rejects_a_name_that_differs_from_the_file_stem(tmp_path):
    path = write(tmp_path, "employment", census())
    with pytest.raises(ValueError, match="file stem") as exc:
        load_problems(tmp_path)
    assert str(path) in str(exc.value)


def test_get_problem_rejects_a_name_that_differs_from_the_file_stem(tmp_path):
    write(tmp_path, "employment", census())
    with pytest.raises(ValueError, match="file stem"):
        get_problem("employment", tmp_path)


def test_an_empty_problems_folder_has_no_families(tmp_path):
    assert load_problems(tmp_path) == {}


def test_get_problem_unknown_name_lists_the_known_ones(tmp_path):
    write(tmp_path, "census_employment", census())
    small = census() | {"name": "census_small"}
    write(tmp_path, "census_small", small)
    with pytest.raises(ProblemNotFound, match="'nope'") as exc:
        get_problem("nope", tmp_path)
    assert "census_employment, census_small" in str(exc.value)
    assert isinstance(exc.value, LookupError)


def test_get_problem_in_an_empty_folder_says_none_are_known(tmp_path):
    with pytest.raises(ProblemNotFound, match="known: none"):
        get_problem("census_employment", tmp_path)


def test_census_spec_sets_generous_deadlines_for_the_batch_stages(spec):
    assert spec.alerts.deadline_minutes == {
        "ingest_batch": 60, "materialize_features": 60, "score_batch": 60, "monitor_model": 60,
        "ingest_labels": 60}


def test_deadlines_are_optional(tmp_path):
    data = census()
    data.pop("alerts")
    spec = load_problem_file(write(tmp_path, "census_employment", data))
    assert spec.alerts.deadline_minutes == {}


@pytest.mark.parametrize("deadlines, needle", [
    ({"ingest": 60}, "unknown stages ['ingest']"),
    ({"ingest_batch": 0}, "ingest_batch must be in (0, 10080]"),
    ({"score_batch": -5}, "score_batch must be in"),
    ({"monitor_model": 10081}, "monitor_model must be in"),
    ({"ingest_batch": "soon"}, "deadline_minutes.ingest_batch"),
], ids=["unknown-stage", "zero", "negative", "over-a-week", "not-a-number"])
def test_a_bad_deadline_is_refused_naming_the_file(tmp_path, deadlines, needle):
    data = census()
    data["alerts"] = {"deadline_minutes": deadlines}
    path = write(tmp_path, "census_employment", data)
    with pytest.raises(ValueError) as exc:
        load_problem_file(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_an_unknown_alerts_key_is_refused(tmp_path):
    data = census()
    data["alerts"]["page_everyone"] = True
    with pytest.raises(ValueError, match="page_everyone"):
        load_problem_file(write(tmp_path, "census_employment", data))


def test_the_stage_list_matches_the_dag_files():
    from mlcore.spec_rules import DAG_STAGES

    assert sorted(DAG_STAGES) == sorted(p.stem for p in (ROOT / "dags").glob("*.py"))
