"""Artifact integrity before every alias move and every load, on SQLite and PostgreSQL.

* A forced promotion (``mlcore promote V --force``) skips the quality checks, never the
  SHA-256: a tampered or missing artifact is refused and the alias does not move. Moving the
  challenger is checked the same way.
* ``load_model`` tells a missing file (``ArtifactMissing``) from changed bytes
  (``ArtifactTampered``); both are ``ArtifactIntegrityError``.
* Scoring loads and verifies the champion and the shadow challenger before writing anything: a
  challenger that cannot be loaded is skipped (logged, reported in the result) and the
  champion's scoring succeeds; a champion that cannot be loaded fails with nothing written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from registry_stub import register_artifact
from shadow_pair import shadow_pair
from sklearn.dummy import DummyClassifier
from sqlalchemy import func, select

from mlcore.model.registry import (
    CHALLENGER,
    ArtifactIntegrityError,
    ArtifactMissing,
    ArtifactTampered,
    alias_holder,
    alias_log,
    get_version,
    load_model,
    move_alias,
)
from mlcore.promotion import promote_version
from mlcore.scoring import score_batch
from mlcore.store.models import Prediction
from mlcore.store.session import session_scope

_made = iter(range(1_000_000))


def dummy(spec, settings) -> int:
    """A tiny registered model with an artifact of its own (artifacts are content-addressed:
    identical models would share one file)."""
    model = DummyClassifier(strategy="constant", constant=0).fit(np.zeros((4, 1)), [0, 1, 0, 1])
    model.tag_ = next(_made)
    return register_artifact(spec, settings, model, algorithm="dummy")


def artifact(settings, problem: str, version: int) -> Path:
    return Path(get_version(problem, version, settings.db_url).artifact_uri)


def damage(path: Path, how: str) -> None:
    """Flip one byte of the file, or delete it."""
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def predictions(settings, problem: str, batch_id: str) -> dict[int, int]:
    """Stored prediction rows per model version for one batch."""
    with session_scope(settings.db_url) as s:
        return dict(s.execute(
            select(Prediction.model_version, func.count()).where(
                Prediction.problem == problem, Prediction.batch_id == batch_id)
            .group_by(Prediction.model_version)).all())


# --- alias moves ----------------------------------------------------------------------------

@pytest.mark.parametrize("how, error", [("flip", ArtifactTampered), ("delete", ArtifactMissing)])
def test_a_forced_promotion_of_a_bad_artifact_is_refused(spec, settings, how, error):
    champion, bad = dummy(spec, settings), dummy(spec, settings)
    move_alias(spec.name, expected=None, new=champion, reason="first", url=settings.db_url,
               settings=settings)
    path = artifact(settings, spec.name, bad)
    damage(path, how)

    with pytest.raises(error, match=rf"'{spec.name}' v{bad}: artifact .*{path.name}") as info:
        promote_version(spec, bad, "ship it", settings, force=True)

    message = str(info.value)
    if how == "flip":
        registered = get_version(spec.name, bad, settings.db_url).artifact_sha256
        assert f"expected {registered[:12]}" in message and "found " in message
    else:
        assert "missing" in message
    assert alias_holder(spec.name, settings.db_url) == champion
    assert [e["to"] for e in alias_log(spec.name, settings.db_url)] == [champion]


def test_moving_the_challenger_onto_a_tampered_artifact_is_refused(spec, settings):
    champion, bad = dummy(spec, settings), dummy(spec, settings)
    move_alias(spec.name, expected=None, new=champion, reason="first", url=settings.db_url)
    damage(artifact(settings, spec.name, bad), "flip")

    # Without settings (a caller that has only the database URL): the bytes are still hashed.
    with pytest.raises(ArtifactTampered, match=rf"v{bad}: .*does not match"):
        move_alias(spec.name, expected=None, new=bad, reason="shadow it", url=settings.db_url,
                   alias=CHALLENGER)
    assert alias_holder(spec.name, settings.db_url, CHALLENGER) is None
    assert len(alias_log(spec.name, settings.db_url)) == 1


def test_a_forced_promotion_of_an_intact_artifact_still_moves(spec, settings):
    champion, other = dummy(spec, settings), dummy(spec, settings)
    move_alias(spec.name, expected=None, new=champion, reason="first", url=settings.db_url,
               settings=settings)
    result = promote_version(spec, other, "ship it", settings, force=True)
    assert result["promoted"] and alias_holder(spec.name, settings.db_url) == other


def _cli(settings, monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """``mlcore`` in-process over ``settings``' home and database: (exit code, stderr)."""
    from mlcore.cli import main
    from mlcore.config import get_settings

    monkeypatch.setenv("MLCORE_HOME", str(settings.home))
    monkeypatch.setenv("MLCORE_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(settings.problems_dir))
    get_settings.cache_clear()
    try:
        code = main(list(argv))
    finally:
        get_settings.cache_clear()
    return code, capsys.readouterr().err


def test_the_cli_never_moves_an_alias_onto_a_missing_artifact(spec, settings, monkeypatch,
                                                              capsys):
    """`promote --alias challenger` and `rollback` check the artifact as a promotion does: a
    deleted file is refused by name, not waved through with a warning."""
    first, second, gone = dummy(spec, settings), dummy(spec, settings), dummy(spec, settings)
    move_alias(spec.name, expected=None, new=first, reason="first", url=settings.db_url,
               settings=settings)
    promote_version(spec, second, "next", settings, force=True)
    damage(artifact(settings, spec.name, gone), "delete")
    damage(artifact(settings, spec.name, first), "delete")

    code, err = _cli(settings, monkeypatch, capsys, "promote", str(gone), "--alias", "challenger",
                     "--problem", spec.name, "--reason", "shadow it")
    assert code != 0 and "missing" in err and f"v{gone}" in err
    assert alias_holder(spec.name, settings.db_url, CHALLENGER) is None

    code, err = _cli(settings, monkeypatch, capsys, "rollback", "--problem", spec.name,
                     "--reason", "undo")
    assert code != 0 and "missing" in err and f"v{first}" in err
    assert alias_holder(spec.name, settings.db_url) == second


# --- load_model -----------------------------------------------------------------------------

def test_load_model_tells_missing_from_tampered(spec, settings):
    deleted, flipped = dummy(spec, settings), dummy(spec, settings)
    gone, changed = artifact(settings, spec.name, deleted), artifact(settings, spec.name, flipped)
    damage(gone, "delete")
    damage(changed, "flip")

    with pytest.raises(ArtifactIntegrityError) as missing:
        load_model(get_version(spec.name, deleted, settings.db_url), settings)
    assert type(missing.value) is ArtifactMissing, type(missing.value)
    assert not isinstance(missing.value, ArtifactTampered)
    assert f"v{deleted}" in str(missing.value) and str(gone) in str(missing.value)
    assert "missing" in str(missing.value)

    with pytest.raises(ArtifactIntegrityError) as tampered:
        load_model(get_version(spec.name, flipped, settings.db_url), settings)
    assert type(tampered.value) is ArtifactTampered, type(tampered.value)
    sha = get_version(spec.name, flipped, settings.db_url).artifact_sha256
    assert f"v{flipped}" in str(tampered.value) and str(changed) in str(tampered.value)
    assert f"expected {sha[:12]}" in str(tampered.value)


# --- scoring with a shadow challenger -------------------------------------------------------

@pytest.fixture
def shadowed(spec, slices, settings):
    """Batch 2016 ingested and materialized on ``settings``; champion and challenger: two real
    pipelines (own artifacts, nothing shared with other tests)."""
    champion, challenger, curated = shadow_pair(spec, slices, settings)
    return champion, challenger, len(curated)


@pytest.mark.parametrize("how, error", [("flip", "ArtifactTampered"),
                                        ("delete", "ArtifactMissing")])
def test_a_bad_challenger_is_skipped_and_the_champion_scores(spec, settings, shadowed, how,
                                                            error, caplog):
    champion, challenger, rows = shadowed
    damage(artifact(settings, spec.name, challenger), how)

    with caplog.at_level(logging.WARNING, logger="mlcore.scoring"):
        result = score_batch(spec, "2016", settings)

    assert (result.model_version, result.rows) == (champion, rows)
    assert result.challenger_version is None and result.challenger_mean_score is None
    assert result.skipped_challenger is not None
    assert result.skipped_challenger["version"] == challenger
    assert result.skipped_challenger["reason"].startswith(error)
    assert result.to_dict()["skipped_challenger"] == result.skipped_challenger
    assert predictions(settings, spec.name, "2016") == {champion: rows}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and f"challenger v{challenger} skipped" in r.getMessage()]
    assert warned and error in warned[0].getMessage() and spec.name in warned[0].getMessage()


def test_an_unloadable_champion_fails_before_anything_is_written(spec, settings, shadowed):
    champion, _, _ = shadowed
    damage(artifact(settings, spec.name, champion), "delete")

    with pytest.raises(ArtifactMissing, match=rf"v{champion}: .*missing"):
        score_batch(spec, "2016", settings)
    assert predictions(settings, spec.name, "2016") == {}
