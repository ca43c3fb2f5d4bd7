"""The operator CLI: exit codes (0 ok/no-op, 2 bad input, 3 conflict), messages, JSON output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from registry_stub import register_stub
from sklearn.dummy import DummyClassifier

from mlcore.cli import main
from mlcore.config import get_settings
from mlcore.data.integrity import fingerprint
from mlcore.problems import get_problem
from mlcore.store.models import Batch, Materialization, Prediction
from mlcore.store.session import session_scope, upgrade
from mlcore.training import save_artifact

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``main`` over a temporary home and database; returns (exit code, stdout, stderr)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    problems = tmp_path / "problems"  # one spec: commands may leave out --problem
    problems.mkdir()
    (problems / "census_employment.yaml").write_text(
        (ROOT / "problems" / "census_employment.yaml").read_text())
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(problems))
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCORE_DATABASE_URL", url)
    get_settings.cache_clear()

    def run(*argv: str) -> SimpleNamespace:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)

    yield SimpleNamespace(run=run, url=url, home=tmp_path / "home")
    get_settings.cache_clear()


@pytest.fixture
def migrated(cli):
    upgrade(cli.url)
    return cli


def register(url: str) -> int:
    settings = get_settings()
    assert settings.db_url == url
    # a real artifact: every alias move verifies its SHA-256, forced or not
    model = DummyClassifier(strategy="constant", constant=1).fit([[0], [1]], [0, 1])
    uri, sha = save_artifact(model, settings, "census_employment")
    return register_stub(get_problem("census_employment", settings.problems_dir), settings,
                         artifact_uri=uri, artifact_sha256=sha,
                         validation={"logistic_regression": {"roc_auc": 0.81}})


def test_init_then_ingest_is_idempotent_and_refuses_other_content(cli, slices):
    init = cli.run("init")
    assert init.code == 0 and "initialized" in init.out
    assert (cli.home / "feast" / "registry.db").is_file()

    first = cli.run("ingest", str(slices[2015]), "--batch-id", "2015")
    assert first.code == 0 and "batch 2015 published: 1500 rows, 0 quarantined" in first.out

    again = cli.run("ingest", str(slices[2015]), "--batch-id", "2015")
    assert again.code == 0 and "already published (no-op)" in again.out

    other = cli.run("ingest", str(slices[2016]), "--batch-id", "2015")
    assert other.code == 3
    assert other.err.startswith("conflict:") and "'2015'" in other.err

    listed = cli.run("batches", "--json")
    assert listed.code == 0
    [batch] = json.loads(listed.out)
    assert (batch["batch_id"], batch["state"], batch["rows"]) == ("2015", "published", 1500)

    models = cli.run("models", "--json")
    assert models.code == 0 and json.loads(models.out) == []


@pytest.mark.parametrize("batch_id", ["../x", "a b", "x" * 65])
def test_a_bad_batch_id_exits_2_with_the_reason(migrated, slices, batch_id):
    res = migrated.run("ingest", str(slices[2015]), "--batch-id", batch_id)
    assert res.code == 2
    assert res.err.startswith("error: invalid batch id") and repr(batch_id) in res.err
    assert res.out == ""


def test_a_missing_file_exits_2(migrated, tmp_path):
    res = migrated.run("ingest", str(tmp_path / "nope.parquet"), "--batch-id", "b1")
    assert res.code == 2 and "nope.parquet" in res.err


def test_a_rejected_file_exits_2_and_is_listed_as_rejected(migrated, slices, tmp_path):
    source = tmp_path / "no_age.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["AGEP"]).to_parquet(source, index=False)
    res = migrated.run("ingest", str(source), "--batch-id", "b1")
    assert res.code == 2 and "AGEP" in res.err
    [batch] = json.loads(migrated.run("batches", "--json").out)
    assert (batch["batch_id"], batch["state"]) == ("b1", "rejected")


def test_an_unknown_problem_exits_2(migrated):
    res = migrated.run("batches", "--problem", "nope")
    assert res.code == 2 and "unknown problem 'nope'" in res.err


def test_promoting_a_missing_version_exits_2(migrated):
    res = migrated.run("promote", "5", "--reason", "try")
    assert res.code == 2 and "has no model version 5" in res.err


def test_rollback_without_a_champion_exits_2(migrated):
    res = migrated.run("rollback", "--reason", "oops")
    assert res.code == 2 and "no champion" in res.err


def test_a_checked_promote_without_data_to_judge_on_exits_2(migrated):
    version = register(migrated.url)
    res = migrated.run("promote", str(version), "--reason", "first")
    assert res.code == 2 and "no labelled published batch" in res.err
    assert json.loads(migrated.run("models", "--json").out)[0]["aliases"] == []


def test_promote_force_lists_the_alias_and_is_a_no_op_the_second_time(migrated):
    version = register(migrated.url)

    res = migrated.run("promote", str(version), "--reason", "first", "--force")
    assert res.code == 0 and f"v{version}" in res.out
    again = migrated.run("promote", str(version), "--reason", "first")
    assert again.code == 0 and "no-op" in again.out
    challenger = migrated.run("promote", str(version), "--reason", "shadow",
                              "--alias", "challenger")
    assert challenger.code == 0 and "challenger" in challenger.out

    [model] = json.loads(migrated.run("models", "--json").out)
    assert (model["version"], sorted(model["aliases"])) == (version, ["challenger", "champion"])
    lineage = json.loads(migrated.run("lineage", "--model", str(version), "--json").out)
    assert [(m["alias"], m["to"], m["action"]) for m in lineage["alias_history"]] == [
        ("champion", version, "manual"), ("challenger", version, "manual")]
    assert "forced, checks skipped" in lineage["alias_history"][0]["reason"]
    report = migrated.run("report", "--json")
    assert report.code == 0 and json.loads(report.out)["champion"] == version
    text = migrated.run("report")
    assert text.code == 0 and f"Champion: v{version}" in text.out

    rollback = migrated.run("rollback", "--reason", "oops")
    assert rollback.code == 2 and "no previous holder" in rollback.err


def test_a_missing_required_argument_is_a_usage_error(migrated):
    with pytest.raises(SystemExit) as exc:
        main(["promote", "1"])
    assert exc.value.code == 2


def add_batch(url: str, batch_id: str, *, materialized: bool = False) -> None:
    with session_scope(url) as s:
        s.add(Batch(problem="census_employment", batch_id=batch_id, source_uri="file:///x",
                    sha256="e" * 64, row_count=10, schema_hash="c" * 64, schema={},
                    quarantine_count=1, state="published"))
        if materialized:  # a real partition: "done" is decided from the files on disk
            now = datetime(2015, 12, 31, tzinfo=UTC)
            part = get_settings().partition("features", "census_employment", batch_id)
            part.mkdir(parents=True)
            pd.DataFrame({"x": range(9)}).to_parquet(part / "part-0.parquet")
            s.add(Materialization(problem="census_employment", batch_id=batch_id,
                                  feature_view="fv", offline_uri=str(part), rows=9,
                                  window_start=now, window_end=now, files=fingerprint(part)))


def test_lineage_needs_exactly_one_of_model_or_batch(migrated):
    for argv in (["lineage"], ["lineage", "--model", "1", "--batch", "2015"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_lineage_of_a_batch_as_json(migrated):
    add_batch(migrated.url, "2015")
    version = register(migrated.url)  # trained on 2015
    with session_scope(migrated.url) as s:
        s.add_all([Prediction(problem="census_employment", batch_id="2015", entity_key=str(k),
                              model_version=version, score=0.1) for k in range(4)])

    res = migrated.run("lineage", "--batch", "2015", "--json")
    assert res.code == 0
    data = json.loads(res.out)
    assert (data["batch_id"], data["manifest"]["sha256"], data["manifest"]["quarantine_count"],
            data["manifest"]["state"]) == ("2015", "e" * 64, 1, "published")
    assert [m["version"] for m in data["trained_models"]] == [version]
    assert data["predictions"] == [{"model_version": version, "count": 4}]
    assert data["holdout_evaluations"] == data["drift_reports"] == []
    model = json.loads(migrated.run("lineage", "--model", str(version), "--json").out)
    assert model["judged_on"] == [] and model["version"] == version


@pytest.mark.parametrize("batch_id, reason", [("2099", "'2099'"), ("../x", "invalid batch id"),
                                              ("x' OR '1'='1", "invalid batch id")])
def test_lineage_of_an_unknown_or_invalid_batch_exits_2(migrated, batch_id, reason):
    res = migrated.run("lineage", "--batch", batch_id, "--json")
    assert res.code == 2 and reason in res.err and res.out == ""


def test_backfill_of_done_batches_exits_0_and_says_skipped(migrated):
    add_batch(migrated.url, "2015", materialized=True)
    add_batch(migrated.url, "2016", materialized=True)
    res = migrated.run("backfill", "--stage", "materialize", "--batches", "2015,2016")
    assert res.code == 0 and res.err == ""
    assert "0 ok, 2 skipped, 0 failed" in res.out
    assert "2015         skipped: already done" in res.out
    data = json.loads(migrated.run("backfill", "--stage", "materialize", "--batches", "2016",
                                   "--json").out)
    assert [(b["batch_id"], b["status"], b["detail"]) for b in data["batches"]] == [
        ("2016", "skipped", "already done")]
    assert not (migrated.home / "backfill").exists()  # no attempt, no ledger


def test_backfill_that_fails_at_run_time_exits_1(migrated):
    add_batch(migrated.url, "2015")
    res = migrated.run("backfill", "--stage", "score", "--batches", "2015", "--json")
    assert res.code == 1
    [batch] = json.loads(res.out)["batches"]
    assert (batch["status"], batch["bad_input"]) == ("failed", False)
    assert "error: score: ModelNotFound: batch '2015'" in res.err and "no champion" in res.err


def test_backfill_with_unknown_or_invalid_batches_exits_2_naming_them(migrated, tmp_path):
    add_batch(migrated.url, "2015", materialized=True)
    res = migrated.run("backfill", "--stage", "materialize", "--batches",
                       "nope,2015,../../etc/passwd,x' OR '1'='1", "--json")
    assert res.code == 2
    data = json.loads(res.out)
    assert {b["batch_id"]: b["status"] for b in data["batches"]} == {
        "nope": "failed", "../../etc/passwd": "failed", "x' OR '1'='1": "failed",
        "2015": "skipped"}
    for name in ("'nope'", "'../../etc/passwd'", "\"x' OR '1'='1\""):
        assert name in res.err
    assert not (migrated.home / "backfill").exists()


@pytest.mark.parametrize("argv", [["--max-workers", "0"], ["--max-workers", "9"],
                                  ["--batches", ",".join(f"b{i}" for i in range(501))]])
def test_backfill_knobs_out_of_bounds_exit_2(migrated, argv):
    args = ["backfill", "--stage", "score", "--batches", "2015", *argv]
    res = migrated.run(*args)
    assert res.code == 2 and res.err.startswith("error:")


def test_backfill_refuses_an_unknown_stage(migrated):
    with pytest.raises(SystemExit) as exc:
        main(["backfill", "--stage", "train", "--batches", "2015"])
    assert exc.value.code == 2


def test_batches_shows_the_rejection_decision(migrated, slices, tmp_path):
    """A rejected batch's reasons are what an operator sees in `mlcore batches` (and --json)."""
    bad = tmp_path / "bad.parquet"
    pd.read_parquet(slices[2015]).drop(columns=["AGEP"]).to_parquet(bad, index=False)
    assert migrated.run("ingest", str(bad), "--batch-id", "r1").code == 2
    shown = migrated.run("batches")
    assert shown.code == 0 and "batch 'r1': missing required columns ['AGEP']" in shown.out
    (row,) = json.loads(migrated.run("batches", "--json").out)
    assert row["state"] == "rejected" and "AGEP" in row["reason"]


def scored_2015(url: str, slices) -> int:
    """A registered version whose predictions of batch 2015 rank its rows in file order."""
    keys = pd.read_parquet(slices[2015])["id"]
    version = register(url)
    with session_scope(url) as s:
        s.add_all([Prediction(problem="census_employment", batch_id="2015", entity_key=str(k),
                              model_version=version, score=i / len(keys))
                   for i, k in enumerate(keys)])
    return version


def test_labels_then_performance(migrated, slices, tmp_path):
    """`mlcore labels` stores a batch's late labels (no-op on repeat, conflict exits 3, bad input
    exits 2); `mlcore performance` measures a batch now, or lists what was recorded."""
    assert migrated.run("ingest", str(slices[2015]), "--batch-id", "2015").code == 0
    version = scored_2015(migrated.url, slices)
    assert "no performance reports yet" in migrated.run("performance").out

    first = migrated.run("labels", str(slices[2015]), "--batch-id", "2015")
    assert first.code == 0, first.err
    assert "labels for batch 2015: 1500 stored, 0 already stored; 1500 of 1500 rows" in first.out
    again = migrated.run("labels", str(slices[2015]), "--batch-id", "2015")
    assert again.code == 0 and "already stored (no-op): 1500 labels" in again.out

    flipped = tmp_path / "flipped.csv"
    frame = pd.read_parquet(slices[2015])[["id", "employed"]]
    frame.assign(employed=1 - frame["employed"]).to_csv(flipped, index=False)
    conflict = migrated.run("labels", str(flipped), "--batch-id", "2015")
    assert conflict.code == 3 and conflict.err.startswith("conflict: labels for batch '2015'")
    missing = tmp_path / "missing.csv"
    frame.assign(employed=frame["employed"].where(frame.index > 0)).to_csv(missing, index=False)
    bad = migrated.run("labels", str(missing), "--batch-id", "2015")
    assert bad.code == 2 and "never imputed" in bad.err
    assert migrated.run("labels", str(slices[2015]), "--batch-id", "nope").code == 2

    measured = migrated.run("performance", "--batch", "2015", "--as-of", "2030-01-01",
                            "--json")
    assert measured.code == 0, measured.err
    [row] = json.loads(measured.out)
    assert (row["model_version"], row["role"], row["labelled_rows"], row["coverage"]) == (
        version, "other", 1500, 1.0)
    assert row["details"]["as_of"] == "2030-01-01T00:00:00+00:00"
    history = migrated.run("performance")
    assert history.code == 0 and f"2015         v{version:<4} other      roc_auc 0." in history.out
    assert "labelled 1500/1500 (100.0%), matured 1500" in history.out
    early = migrated.run("performance", "--batch", "2015", "--as-of", "2015-06-01")
    assert early.code == 0 and "n/a" in early.out and "fewer than labels.min_rows" in early.out
    assert migrated.run("performance", "--as-of", "2015-06-01").code == 2
    assert migrated.run("ingest", str(slices[2016]), "--batch-id", "2016").code == 0
    unscored = migrated.run("performance", "--batch", "2016")
    assert unscored.code == 0 and "2016: no model version has scored it yet" in unscored.out


def test_performance_shows_the_estimate_made_before_labels_beside_the_realized_value(
        migrated, slices):
    """`mlcore performance`: estimate [CI] and err = realized - estimate on each measured
    batch; an estimated batch without labels yet gets its own line; "not estimated" says why."""
    from mlcore.estimation import Estimate, record_estimate

    for year in (2015, 2016):
        assert migrated.run("ingest", str(slices[year]), "--batch-id", str(year)).code == 0
    version = scored_2015(migrated.url, slices)
    for batch, value in (("2015", 0.5), ("2016", 0.75)):
        record_estimate(Estimate("census_employment", batch, version, "champion", "roc_auc",
                                 value, value - 0.01, value + 0.01, 1500, "cbpe"), migrated.url)
    record_estimate(Estimate("census_employment", "2016", version + 1, "challenger", "roc_auc",
                             None, None, None, 1500, "none", "not estimated: test reason"),
                    migrated.url)
    assert migrated.run("labels", str(slices[2015]), "--batch-id", "2015").code == 0
    assert migrated.run("performance", "--batch", "2015", "--as-of", "2030-01-01").code == 0
    history = migrated.run("performance")
    assert history.code == 0, history.err
    lines = history.out.splitlines()
    assert lines[0].startswith("2015") and "est 0.5000 [0.4900, 0.5100] err " in lines[0]
    assert lines[1].startswith("2016") and "no labels measured yet  est 0.7500 [0.7400, " \
        "0.7600]" in lines[1]
    assert "not estimated: test reason" in lines[2]
    rows = json.loads(migrated.run("performance", "--json").out)
    first = rows[0]
    assert first["estimate"]["estimate"] == 0.5
    assert first["estimate"]["error"] == pytest.approx(first["value"] - 0.5)
    assert [r["value"] for r in rows[1:]] == [None, None]


def test_requests_lists_and_files_a_manual_retrain_request(migrated):
    assert migrated.run("requests").out.strip() == "no retrain requests"
    filed = migrated.run("requests", "--file", "new census methodology")
    assert filed.code == 0 and "#1 pending" in filed.out
    again = migrated.run("requests", "--file", "and a second reason")  # merged, not a second
    assert again.code == 0 and "#1 pending" in again.out
    [request] = json.loads(migrated.run("requests", "--json").out)
    assert (request["triggers"], request["state"]) == (["manual"], "pending")
    assert "new census methodology" in request["reason"] and "second" in request["reason"]
