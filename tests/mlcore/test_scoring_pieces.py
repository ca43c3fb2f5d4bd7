"""Scoring in pieces (issue 19 item 4): a batch read, predicted and spooled ``PIECE_ROWS`` rows at
a time stores what one piece stores, row for row (binary, multiclass with its probabilities,
regression; champion and shadow challenger), with the same mean score and estimates; a failure
in a later piece, or while storing, leaves the stored predictions as they were. Real data,
models and stores; only the piece size (and, for the sampled estimate, its cap) is shrunk."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import delete, select

from mlcore import scoring
from mlcore.config import TrainConfig
from mlcore.datasets import build_dataset
from mlcore.estimation import fitted_estimator
from mlcore.feast import own_partition
from mlcore.feast.own_partition import _Own, batch_features, feature_pieces
from mlcore.features import materialize_batch
from mlcore.ingestion import ingest_batch
from mlcore.model import performance
from mlcore.model.registry import CHALLENGER, get_version, load_model, move_alias
from mlcore.problems import get_problem
from mlcore.scoring import rows_of, score_batch
from mlcore.store.catalog import get_batch
from mlcore.store.models import Prediction
from mlcore.store.session import session_scope
from mlcore.training import train_contender

ROOT = Path(__file__).resolve().parents[2]
# problem -> (data folder, champion's algorithm); the challenger is hist_gradient_boosting
PROBLEMS = {"census_employment": ("census_ma_employment", "logistic_regression"),
            "credit_card_segment": ("credit_card_segment", "logistic_regression"),
            "used_car_price": ("used_car_price", "ridge")}
PIECE = 97  # rows per piece in the tests: pieces of unequal size, none on a file boundary


@pytest.fixture(autouse=True)
def predict_chunk(monkeypatch):
    """``predict_proba`` calls of at most ``PIECE`` rows, as ``PIECE_ROWS`` (1M) is a multiple of
    ``_PREDICT_ROWS`` (1M) in production: the whole-frame code called it on the same rows. A
    multinomial LogisticRegression's probabilities differ in the last bit with the rows of the
    call (BLAS kernels: 7 of 700 rows, 2.2e-16), so only the same calls give the same bits."""
    monkeypatch.setattr(scoring, "_PREDICT_ROWS", PIECE)


@pytest.fixture(scope="module", params=list(PROBLEMS))
def home(request, settings_factory) -> SimpleNamespace:
    """Two batches ingested and materialized (2,000 and 700 sampled rows), a champion and a
    shadow challenger trained on the first; the second is the batch scored."""
    problem = request.param
    folder, algorithm = PROBLEMS[problem]
    settings = settings_factory(f"pieces_{problem}")
    spec = get_problem(problem, ROOT / "problems")
    batches = []
    for f, rows in zip(sorted((ROOT / "data" / folder).glob("*.parquet"))[:2], (2000, 700),
                       strict=True):
        path = settings.home.parent / f.name
        pd.read_parquet(f).sample(rows, random_state=0).to_parquet(path, index=False)
        batches.append(f.stem.rsplit("_", 1)[-1])
        ingest_batch(spec, str(path), batches[-1], settings)
        materialize_batch(spec, batches[-1], settings)
    dataset = build_dataset(spec, settings, until=batches[0])
    versions = [train_contender(spec, dataset, TrainConfig(algorithm=a), settings).version
                for a in (algorithm, "hist_gradient_boosting")]
    move_alias(problem, expected=None, new=versions[0], reason="t", url=settings.db_url)
    move_alias(problem, expected=None, new=versions[1], reason="t", url=settings.db_url,
               alias=CHALLENGER, settings=settings)
    return SimpleNamespace(spec=spec, settings=settings, batch=batches[1], versions=versions)


def stored(home, version: int) -> pd.DataFrame:
    """The version's stored predictions of the batch, in insertion order."""
    with session_scope(home.settings.db_url) as s:
        rows = s.execute(select(Prediction.entity_key, Prediction.score, Prediction.label,
                                Prediction.probabilities).where(
            Prediction.batch_id == home.batch, Prediction.model_version == version)
            .order_by(Prediction.id)).all()
    return pd.DataFrame(rows, columns=["entity_key", "score", "label", "probabilities"])


def test_pieces_store_what_one_piece_stores_row_for_row(home, monkeypatch):
    spec, settings = home.spec, home.settings
    monkeypatch.setattr(scoring, "PIECE_ROWS", 10**9)
    whole = score_batch(spec, home.batch, settings)
    want = {v: stored(home, v) for v in home.versions}
    calls: list[int] = []
    real = scoring.predict_proba
    monkeypatch.setattr(scoring, "predict_proba", lambda m, x: calls.append(len(x)) or real(m, x))
    monkeypatch.setattr(scoring, "PIECE_ROWS", PIECE)
    pieces = score_batch(spec, home.batch, settings)

    n = whole.rows
    sizes = [min(PIECE, n - lo) for lo in range(0, n, PIECE)]
    assert calls == [s for s in sizes for _ in home.versions]  # champion, challenger per piece
    assert (pieces.rows, pieces.challenger_version) == (n, home.versions[1]) and len(sizes) > 5
    for v in home.versions:
        got = stored(home, v)
        assert len(got) == n
        pd.testing.assert_frame_equal(got, want[v], check_exact=True)
    assert (got["label"].notna().all() and got["probabilities"].str.startswith("[").all()) \
        if spec.target.kind == "multiclass" else got["label"].isna().all()
    assert pieces.mean_score == pytest.approx(whole.mean_score, rel=1e-12, abs=0)
    assert pieces.challenger_mean_score == pytest.approx(whole.challenger_mean_score,
                                                         rel=1e-12, abs=0)
    assert pieces.mean_score == pytest.approx(want[home.versions[0]]["score"].mean(), rel=1e-12)
    for a, b in zip(pieces.estimates, whole.estimates, strict=True):
        assert a["estimate"] is not None and a["reason"] is None
        assert {**a, "estimate": None, "ci_low": None, "ci_high": None} == \
            {**b, "estimate": None, "ci_low": None, "ci_high": None}
        for k in ("estimate", "ci_low", "ci_high"):  # classifiers: bit for bit; DLE: summed
            assert a[k] == (b[k] if spec.target.kind != "regression"
                            else pytest.approx(b[k], rel=1e-12, abs=0))


def test_stored_predictions_are_the_models_on_the_whole_frame(home, monkeypatch):
    """What scoring stored before it streamed: the models' outputs on ``batch_features``' whole
    frame (``_predict``), in its row order, keys as text."""
    spec, settings = home.spec, home.settings
    monkeypatch.setattr(scoring, "PIECE_ROWS", PIECE)
    score_batch(spec, home.batch, settings)
    frame = batch_features(spec, get_batch(spec.name, home.batch, settings.db_url), settings)
    for v in home.versions:
        model = load_model(get_version(spec.name, v, settings.db_url), settings)
        want = rows_of(model, scoring._predict(model, frame, spec.feature_names))
        got = stored(home, v)
        assert got["entity_key"].tolist() == frame[spec.entity.key].astype(str).tolist()
        np.testing.assert_array_equal(got["score"].to_numpy(), want.score)
        if want.probabilities is not None:
            assert got["probabilities"].tolist() == want.probabilities
            assert got["label"].tolist() == want.label


def test_a_sampled_estimate_is_the_whole_batch_estimate(home, monkeypatch):
    """Above the estimator's cap (shrunk here to 300 expanded rows: a sample of 150 / classes
    rows) the pieces keep the very rows ``PerformanceEstimator.estimate`` samples from the
    whole batch; DLE sums every row's predicted loss."""
    spec, settings = home.spec, home.settings
    monkeypatch.setattr(performance, "MAX_EXPANDED_ROWS", 300)
    monkeypatch.setattr(scoring, "PIECE_ROWS", PIECE)
    result = score_batch(spec, home.batch, settings)
    frame = batch_features(spec, get_batch(spec.name, home.batch, settings.db_url), settings)
    X = frame[spec.feature_names]
    for v, got in zip(home.versions, result.estimates, strict=True):
        mv = get_version(spec.name, v, settings.db_url)
        model = load_model(mv, settings)
        outputs = scoring._predict(model, frame, spec.feature_names)
        want = fitted_estimator(spec, mv, model, settings)[0].estimate(X, outputs)
        if spec.target.kind == "regression":
            assert got["estimate"] == pytest.approx(want, rel=1e-12, abs=0)
        else:
            assert got["estimate"] == want


def _fail_on(monkeypatch, name: str, call: int, spools: list[Path]) -> None:
    """``scoring.<name>`` raises at its ``call``-th call; the spool folders then are noted."""
    real, seen = getattr(scoring, name), []

    def failing(*args, **kwargs):
        seen.append(1)
        if len(seen) == call:
            spools.extend(_leftovers(Path(tempfile.gettempdir())))
            raise RuntimeError(f"{name} failed at call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, name, failing)


def _leftovers(tmp: Path) -> list[Path]:
    return list(tmp.glob("mlcore-scores-*"))


@pytest.mark.parametrize("where", ["predict", "store"])
def test_a_failure_in_a_later_piece_leaves_the_stored_predictions_as_they_were(home, monkeypatch,
                                                                                tmp_path, where):
    """Nothing stored before: nothing after. Stored before: the same rows after. A failure
    while predicting a later piece (its 3rd, both models) or while inserting a later chunk of
    the one transaction."""
    spec, settings = home.spec, home.settings
    with session_scope(settings.db_url) as s:
        s.execute(delete(Prediction).where(Prediction.batch_id == home.batch))
    monkeypatch.setattr(scoring, "PIECE_ROWS", PIECE)
    monkeypatch.setattr(scoring, "_CHUNK", 100)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the spool goes
    for round_ in ("nothing stored", "stored before"):
        before = {v: stored(home, v) for v in home.versions}
        assert all(len(b) == 0 for b in before.values()) == (round_ == "nothing stored")
        spools: list[Path] = []
        with monkeypatch.context() as m:
            if where == "predict":
                _fail_on(m, "predict_proba", 2 * 2 + 1, spools)
            else:
                _fail_on(m, "_insert", 5, spools)  # the champion's chunks 1-4 were inserted
            with pytest.raises(RuntimeError, match="failed at call"):
                score_batch(spec, home.batch, settings)
        for v in home.versions:
            pd.testing.assert_frame_equal(stored(home, v), before[v])
        assert len(spools) == 1 and _leftovers(tmp_path) == []  # the spool was there: removed
        score_batch(spec, home.batch, settings)


def test_feature_pieces_are_batch_features_cut(home):
    spec, settings = home.spec, home.settings
    batch = get_batch(spec.name, home.batch, settings.db_url)
    pieces = feature_pieces(spec, batch, settings, PIECE)
    assert pieces.source == "own partition"
    got = list(pieces.pieces)
    assert [len(p) for p in got[:-1]] == [PIECE] * (len(got) - 1) and sum(map(len, got)) == \
        pieces.rows
    pd.testing.assert_frame_equal(pd.concat(got, ignore_index=True),
                                  batch_features(spec, batch, settings), check_exact=True)


# ---------------------------------------------------------------------------- unit: no stores

def test_pieces_keep_the_whole_frames_dtypes_where_a_column_has_nulls_in_some(tmp_path):
    """An integer (or bool) column with a null in one piece only: pyarrow gives that piece
    float64 (object) and the others int64 (bool); the whole frame has float64 (object)."""
    n = 10
    table = pa.table({"id": np.arange(n), "t": pa.array(pd.date_range("2020", periods=n,
                                                                      tz="UTC")),
                      "i": pa.array([1, 2, 3, 4, 5, None, 7, 8, 9, 10], pa.int32()),
                      "b": pa.array([True] * 8 + [None, False]),
                      "x": np.linspace(0, 1, n)})
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path, row_group_size=4)
    own = _Own([path], ["id", "t", "i", "b", "x"], "t", "b1", n, {"i": "float64", "b": "object"})
    whole = own.frame()
    pieces = list(own.pieces(3))
    assert [p["i"].dtype.kind for p in pieces] == ["f"] * 4
    assert [len(p) for p in pieces] == [3, 3, 3, 1]
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole, check_exact=True)
    assert whole.columns.tolist() == ["id", "event_timestamp", "batch_id", "i", "b", "x"]


@pytest.mark.parametrize("kind", ["packed", "int keys, many times", "float keys"])
def test_pairs_find_duplicates_and_exactly_the_pairs_held(kind, monkeypatch):
    """Both forms of ``_Pairs``: packed codes (integer keys, few distinct times) and keys and
    times sorted together (otherwise), against a set of tuples."""
    rng = np.random.default_rng(3)
    keys, times = rng.integers(-20, 50, 400), rng.integers(0, 8, 400) * 10**9
    if kind == "int keys, many times":
        monkeypatch.setattr(own_partition, "MAX_TIMES", 3)
    have = set(zip(keys.tolist(), times.tolist(), strict=True))
    cast = (lambda a: a.astype("float64")) if kind == "float keys" else (lambda a: a)
    pairs = own_partition._Pairs.of(cast(keys.copy()), times.copy())
    assert (pairs.codes is not None) == (kind == "packed")
    assert pairs.duplicated() == (len(have) < 400)
    k, t = rng.integers(-25, 55, 3000), rng.integers(-1, 9, 3000) * 10**9
    want = np.array([(a, b) in have for a, b in zip(k.tolist(), t.tolist(), strict=True)])
    np.testing.assert_array_equal(pairs.holds(cast(k), t), want)
    assert want.any() and not want.all()
    unique = np.unique(np.c_[keys, times], axis=0)
    assert not own_partition._Pairs.of(cast(unique[:, 0].copy()), unique[:, 1].copy()).duplicated()
