"""``mlcore stream produce/serve/seal/status`` through ``mlcore.cli.main``: output, exit codes
(0 ok, 2 bad input) and one-line errors, against the real Redis (a claimed db, flushed after)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mlcore.cli import main
from mlcore.config import get_settings

ROOT = Path(__file__).resolve().parents[2]
P = "census_employment"
STREAM = """
stream:
  seal_every_events: 20
  seal_every_seconds: 3600
  max_dead_letters: 0
"""


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, claim_redis_db):
    """``main`` over a temporary home, SQLite store, a claimed Redis db and a spec sealing every
    20 events; ``run(*argv)`` returns (exit code, stdout, stderr)."""
    client, db = claim_redis_db()
    problems = tmp_path / "problems"
    problems.mkdir()
    (problems / f"{P}.yaml").write_text(
        (ROOT / "problems" / f"{P}.yaml").read_text() + STREAM)
    monkeypatch.setenv("MLCORE_PROBLEMS_DIR", str(problems))
    monkeypatch.setenv("MLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCORE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MLCORE_STREAM_URL", f"redis://127.0.0.1:6379/{db}")
    monkeypatch.delenv("MLCORE_AIRFLOW_URL", raising=False)
    get_settings.cache_clear()

    def run(*argv: str) -> SimpleNamespace:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)

    yield SimpleNamespace(run=run, tmp=tmp_path)
    get_settings.cache_clear()
    client.flushdb()
    client.close()


def event_lines(slices, n: int) -> list[str]:
    rows = pd.read_parquet(slices[2016]).head(n).to_dict("records")
    return [json.dumps({"event_id": f"e{i}", **row}) for i, row in enumerate(rows)]


def test_produce_serve_seal_status(cli, slices):
    assert cli.run("init").code == 0
    lines = event_lines(slices, 30)
    bad = json.loads(lines[5])
    bad["AGEP"] = 130.0
    lines[5] = json.dumps(bad)
    events = cli.tmp / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    sent = cli.run("stream", "produce", str(events), "--problem", P)
    assert (sent.code, sent.out.strip()) == (0, f"sent 30 events to the stream of {P}")
    waiting = json.loads(cli.run("stream", "status", "--json").out)
    assert (waiting["lag"], waiting["events_taken"], waiting["attention"]) == (30, 0, [])

    served = cli.run("stream", "serve", "--consumer", "cli", "--max-seconds", "2")
    assert served.code == 0, served.err
    counts = json.loads(served.out.strip().splitlines()[-1])
    assert {k: counts[k] for k in ("read", "taken", "duplicates", "dead_letters")} == {
        "read": 30, "taken": 29, "duplicates": 0, "dead_letters": 1}
    assert counts["sealed"] == [f"{P}-stream-000001", f"{P}-stream-000002"]  # 20 + 9
    assert "consumer cli" in served.err

    again = cli.run("stream", "seal")
    assert (again.code, again.out.strip()) == (0, "sealed 0 batches: none")

    state = json.loads(cli.run("stream", "status", "--json").out)
    assert (state["lag"], state["pending"], state["dead_letters"]) == (0, 0, 1)
    assert (state["events_taken"], state["open_events"]) == (29, 0)
    assert state["segments"] == {"published": 2}
    assert state["last_sealed"]["batch_id"] == f"{P}-stream-000002"
    assert len(state["attention"]) == 1 and "max_dead_letters 0" in state["attention"][0]
    text = cli.run("stream", "status")
    assert text.code == 0 and "ATTENTION: 1 dead letters" in text.out
    assert f"last sealed: {P}-stream-000002 (published, 9 events" in text.out

    batches = json.loads(cli.run("batches", "--json").out)
    assert {b["batch_id"]: b["state"] for b in batches} == {
        f"{P}-stream-000001": "published", f"{P}-stream-000002": "published"}


def test_seal_publishes_what_serve_left_open(cli, slices, monkeypatch):
    assert cli.run("init").code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(event_lines(slices, 12))))
    assert cli.run("stream", "produce", "-", "--rate", "1000").code == 0
    served = cli.run("stream", "serve", "--max-seconds", "1")
    assert json.loads(served.out.strip().splitlines()[-1])["sealed"] == []  # 12 < 20
    sealed = cli.run("stream", "seal")
    assert (sealed.code, sealed.out.strip()) == (0, f"sealed 1 batches: {P}-stream-000001")


@pytest.mark.parametrize("content, line", [
    ('{"event_id": "a", "id": 1}\n{"id": 2,\n', "line 2: not JSON"),
    ('\n["not", "an", "object"]\n', "line 2: not a JSON object"),
])
def test_a_bad_line_is_bad_input_on_one_line(cli, content, line):
    events = cli.tmp / "bad.jsonl"
    events.write_text(content)
    got = cli.run("stream", "produce", str(events))
    assert got.code == 2 and got.out == ""
    assert line in got.err and got.err.count("\n") == 1, got.err


def test_usage_errors_exit_2(cli):
    missing = cli.run("stream", "produce", str(cli.tmp / "nope.jsonl"))
    assert missing.code == 2 and "nope.jsonl" in missing.err and missing.err.count("\n") == 1
    unknown = cli.run("stream", "status", "--problem", "no_such_problem")
    assert unknown.code == 2 and "no_such_problem" in unknown.err
    assert unknown.err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        cli.run("stream", "serve", "--max-seconds", "soon")
    assert exc.value.code == 2


def test_redis_unreachable_is_one_line(cli, monkeypatch):
    """An unreachable stream server is the operator's to fix (exit 5, as an unreachable
    database), not an internal error."""
    monkeypatch.setenv("MLCORE_STREAM_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    events = cli.tmp / "one.jsonl"
    events.write_text('{"event_id": "a", "id": 1}\n')
    for argv in (("stream", "produce", str(events)), ("stream", "status")):
        got = cli.run(*argv)
        assert got.err.count("\n") == 1 and "internal error" not in got.err, got.err
        assert got.code == 5 and "MLCORE_STREAM_URL" in got.err, got.err
