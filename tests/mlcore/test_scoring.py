"""Scoring: a published batch through the champion, stored per (batch, entity, version)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from registry_stub import register_artifact
from shadow_pair import shadow_pair
from sqlalchemy import select

from mlcore.batches import BatchNotFound
from mlcore.data.io import read_curated
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model.evaluation import predict_proba
from mlcore.model.registry import ModelNotFound, get_version, load_model
from mlcore.scoring import score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import ModelVersion, Prediction
from mlcore.store.session import session_scope


def stored(settings, batch_id: str, version: int) -> pd.DataFrame:
    with session_scope(settings.db_url) as s:
        rows = s.execute(select(Prediction.entity_key, Prediction.score).where(
            Prediction.batch_id == batch_id, Prediction.model_version == version)).all()
    return pd.DataFrame(rows, columns=["entity_key", "score"])


@pytest.fixture(scope="module")
def unlabelled(spec, slices, loop, tmp_path_factory) -> str:
    """The 2018 slice without its target, ingested and materialized as batch ``u2018``."""
    path = tmp_path_factory.mktemp("unlabelled") / "employment_2018.parquet"
    pd.read_parquet(slices[2018]).drop(columns=["employed"]).to_parquet(path, index=False)
    ingest_batch(spec, str(path), "u2018", loop.settings)
    materialize_batch(spec, "u2018", loop.settings)
    return "u2018"


def test_scoring_stores_one_score_per_row_of_the_batch(spec, loop):
    version = loop.contender.version
    result = score_batch(spec, "2017", loop.settings)

    curated = read_curated(get_batch(spec.name, "2017", loop.settings.db_url))
    got = stored(loop.settings, "2017", version)
    assert (result.rows, result.model_version, result.batch_id) == (1500, version, "2017")
    assert len(got) == len(curated) == 1500
    assert sorted(got["entity_key"]) == sorted(curated["id"].astype(str))
    assert got["score"].between(0.0, 1.0).all()
    assert result.mean_score == pytest.approx(got["score"].mean())
    assert result.rows_per_second > 0


def test_scores_equal_the_champion_on_the_curated_features(spec, loop):
    score_batch(spec, "2017", loop.settings)
    curated = read_curated(get_batch(spec.name, "2017", loop.settings.db_url))
    model = load_model(get_version(spec.name, loop.contender.version, loop.settings.db_url),
                       loop.settings)
    want = pd.Series(predict_proba(model, curated[spec.feature_names]),
                     index=curated["id"].astype(str))
    got = stored(loop.settings, "2017", loop.contender.version).set_index("entity_key")["score"]
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-6)


def test_rescoring_is_idempotent(spec, loop):
    first = score_batch(spec, "2017", loop.settings)
    before = stored(loop.settings, "2017", first.model_version).sort_values("entity_key")
    again = score_batch(spec, "2017", loop.settings)
    after = stored(loop.settings, "2017", again.model_version).sort_values("entity_key")
    assert len(after) == len(before) == 1500
    pd.testing.assert_frame_equal(after.reset_index(drop=True), before.reset_index(drop=True))
    assert again.mean_score == first.mean_score


def test_an_unlabelled_batch_is_scored(spec, loop, unlabelled):
    result = score_batch(spec, unlabelled, loop.settings,
                         version=loop.contender.version)
    got = stored(loop.settings, unlabelled, loop.contender.version)
    assert result.rows == len(got) == 1500
    assert got["score"].between(0.0, 1.0).all()


def test_scoring_an_unpublished_batch_is_not_found(spec, loop):
    with pytest.raises(BatchNotFound, match="'2099'"):
        score_batch(spec, "2099", loop.settings)


def test_scoring_with_an_unknown_version_is_not_found(spec, loop):
    with pytest.raises(ModelNotFound, match="version 99"):
        score_batch(spec, "2017", loop.settings, version=99)


def test_scoring_without_a_champion_is_not_found(spec, slices, sqlite_settings):
    ingest_batch(spec, str(slices[2015]), "2015", sqlite_settings)
    with pytest.raises(ModelNotFound, match="no champion"):
        score_batch(spec, "2015", sqlite_settings)
    with session_scope(sqlite_settings.db_url) as s:
        assert s.query(Prediction).count() == 0


@pytest.fixture(scope="module")
def shadowed(spec, slices, settings_factory):
    """Batch 2016 materialized; champion and challenger: two real pipelines of different C."""
    settings = settings_factory("shadow")
    champion, challenger, curated = shadow_pair(spec, slices, settings)
    return settings, [champion, challenger], curated


def test_a_challenger_is_shadow_scored_next_to_the_champion(spec, shadowed):
    settings, (champion, challenger), curated = shadowed
    result = score_batch(spec, "2016", settings)
    assert (result.model_version, result.challenger_version) == (champion, challenger)
    for version in (champion, challenger):
        model = load_model(get_version(spec.name, version, settings.db_url), settings)
        want = pd.Series(predict_proba(model, curated[spec.feature_names]),
                         index=curated["id"].astype(str))
        got = stored(settings, "2016", version).set_index("entity_key")["score"]
        assert len(got) == 1500
        np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-6)
    assert result.challenger_mean_score == pytest.approx(stored(settings, "2016", challenger)
                                                         ["score"].mean())
    assert stored(settings, "2016", champion)["score"].std() != pytest.approx(
        stored(settings, "2016", challenger)["score"].std())  # really two models
    pinned = score_batch(spec, "2016", settings, version=champion)  # an explicit version only
    assert pinned.challenger_version is None


# ---------------------------------------------------------------------------- own-partition path

@pytest.fixture(scope="module")
def partitions(spec, slices, settings_factory, tmp_path_factory):
    """Four materialized batches whose keys overlap: ``older`` re-sends 300 keys of ``2017``
    one year earlier (older: loses to 2017's rows; newer for its own rows: excluded), ``tie``
    re-sends 200 rows of ``2016`` at the same key and event time with other AGEP values (a
    tie Feast breaks by its sort order). A LogisticRegression champion fitted on 2016."""
    from mlcore.model.preprocessing import build_pipeline
    from mlcore.model.registry import move_alias

    settings = settings_factory("partitions")
    tmp = tmp_path_factory.mktemp("partitions")
    s2016, s2017 = pd.read_parquet(slices[2016]), pd.read_parquet(slices[2017])
    older = s2017.head(300).assign(year=2016)
    tie = s2016.head(200).assign(AGEP=lambda d: d["AGEP"] + 7)
    for name, frame in (("2016", s2016), ("2017", s2017), ("older", older), ("tie", tie)):
        path = tmp / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        # ``tie`` as published before cross-batch checks (issue 15): now only a correction
        legacy = spec.model_copy(update={"corrections": "supersede"})
        ingest_batch(legacy if name == "tie" else spec, str(path), name, settings)
        materialize_batch(spec, name, settings)
    curated = read_curated(get_batch(spec.name, "2016", settings.db_url))
    pipe = build_pipeline(spec, "logistic_regression", 0).fit(curated[spec.feature_names],
                                                              curated["employed"])
    version = register_artifact(spec, settings, pipe, batches=("2016",), rows=(1, 1),
                                train_rows=1500)
    move_alias(spec.name, expected=None, new=version, reason="t", url=settings.db_url)
    return settings, version


@pytest.mark.parametrize("batch_id", ["2017", "older"])
def test_batch_features_are_the_point_in_time_join(spec, partitions, batch_id):
    """Keys also held elsewhere at an older or a newer time: the own partition's rows are the
    only candidates at the row's time, so the fast path is taken and is Feast's frame."""
    from mlcore.feast.bounded import point_in_time_features
    from mlcore.feast.own_partition import batch_features, own_partition_features

    settings, _ = partitions
    batch = get_batch(spec.name, batch_id, settings.db_url)
    want = point_in_time_features(spec, [batch], settings, with_target=False)
    assert own_partition_features(spec, batch, settings) is not None
    pd.testing.assert_frame_equal(batch_features(spec, batch, settings), want, check_exact=True)


@pytest.mark.parametrize("batch_id", ["2016", "tie"])
def test_a_tie_in_another_partition_is_left_to_feast(spec, slices, partitions, batch_id):
    """A (key, time) held by two partitions: Feast keeps either row (its sort order decides;
    seen to differ from one query to the next), so the own partition is not provably its
    answer and ``batch_features`` is Feast's join."""
    from mlcore.feast.bounded import point_in_time_features
    from mlcore.feast.own_partition import batch_features, own_partition_features

    settings, _ = partitions
    batch = get_batch(spec.name, batch_id, settings.db_url)
    assert own_partition_features(spec, batch, settings) is None
    got = batch_features(spec, batch, settings)
    want = point_in_time_features(spec, [batch], settings, with_target=False)
    untied = [c for c in want.columns if c != "AGEP"]
    pd.testing.assert_frame_equal(got[untied], want[untied], check_exact=True)
    pd.testing.assert_frame_equal(got.iloc[200:], want.iloc[200:], check_exact=True)
    own = pd.read_parquet(slices[2016]).head(200)["AGEP"].to_numpy().astype("float32")
    tied = got.head(200)["AGEP"].to_numpy()
    assert ((tied == own) | (tied == own + 7)).all()  # one of the two tied rows


@pytest.mark.parametrize("batch_id", ["2017", "older"])
def test_scores_are_the_champion_on_the_point_in_time_frame(spec, partitions, batch_id):
    from mlcore.feast.bounded import point_in_time_features

    settings, version = partitions
    result = score_batch(spec, batch_id, settings)
    frame = point_in_time_features(spec, [get_batch(spec.name, batch_id, settings.db_url)],
                                   settings, with_target=False)
    model = load_model(get_version(spec.name, version, settings.db_url), settings)
    want = pd.Series(predict_proba(model, frame[spec.feature_names]),
                     index=frame["id"].astype(str))
    got = stored(settings, batch_id, version).set_index("entity_key")["score"]
    assert result.rows == len(got) == len(want)
    np.testing.assert_array_equal(got.loc[want.index].to_numpy(), want.to_numpy())
    assert result.mean_score == float(want.mean())


def test_sqlite_predictions_keep_the_orm_datetime_text(spec, partitions):
    """The bulk path stores ``created_at`` as the ORM does (it once stored ``...+00:00``)."""
    import re

    from sqlalchemy import text

    settings, version = partitions
    score_batch(spec, "older", settings)
    with session_scope(settings.db_url) as s:
        stamps = set(s.scalars(text("SELECT DISTINCT created_at FROM predictions "
                                    "WHERE batch_id = 'older'")))
        orm = s.scalar(text("SELECT created_at FROM model_versions LIMIT 1"))
        read = s.scalars(select(Prediction.created_at).where(Prediction.batch_id == "older"))
        orm_read = s.scalar(select(ModelVersion.created_at).limit(1))
        assert {r.tzinfo for r in read} == {orm_read.tzinfo}  # read back as ORM rows are
    pattern = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
    assert len(stamps) == 1 and pattern.fullmatch(stamps.pop()) and pattern.fullmatch(orm)


@pytest.mark.parametrize("batch_id, source", [("older", "own partition"), ("tie", "feast join")])
def test_feature_pieces_are_batch_features_cut(spec, partitions, batch_id, source):
    """Scoring's pieces, from the own partition or (a tie: not provably Feast's) from Feast's
    join, are ``batch_features``' frame cut in order (tied rows' AGEP: either row, as above)."""
    from mlcore.feast.own_partition import batch_features, feature_pieces

    settings, _ = partitions
    batch = get_batch(spec.name, batch_id, settings.db_url)
    pieces = feature_pieces(spec, batch, settings, 64)
    got = list(pieces.pieces)
    assert pieces.source == source and sum(map(len, got)) == pieces.rows
    assert [len(p) for p in got] == [64] * (len(got) - 1) + [pieces.rows - 64 * (len(got) - 1)]
    want = batch_features(spec, batch, settings)
    cols = [c for c in want.columns if c != "AGEP"] if batch_id == "tie" else want.columns
    pd.testing.assert_frame_equal(pd.concat(got, ignore_index=True)[cols], want[cols],
                                  check_exact=True)
