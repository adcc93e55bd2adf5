"""The skeleton every score asset runs (``scores.score_resumably``) on DuckDB and on a real
PostgreSQL server: a step killed mid-way and rerun scores only what is missing and ends with
exactly one row per example; rows of another model or of ids that left the batch are removed."""

from __future__ import annotations

import polars as pl
import pytest

from dsel_assets.pipeline.scoring import CHUNK, score_resumably
from resources.store import DuckDBStateStore, PostgresStateStore

BATCH = "b1"
N = 2 * CHUNK + 5  # three chunks


class Killed(RuntimeError):
    pass


class Context:
    """What the skeleton uses of a Dagster context: its log."""

    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, line: str) -> None:
            self.lines.append(line)

    def __init__(self) -> None:
        self.log = Context.Log()


@pytest.fixture
def store(backend, monkeypatch, tmp_path):
    """The StateStore the assets get, on the backend under test, with ``N`` pool examples."""
    if backend.dialect == "postgres":
        monkeypatch.setenv("DSEL_DATABASE_URL", backend.target)
        store = PostgresStateStore()
    else:
        monkeypatch.delenv("DSEL_DATABASE_URL", raising=False)
        store = DuckDBStateStore(database=backend.target)
    with store.session() as db:
        db.migrate()
        db.ensure_score_table("loss_scores")
        examples = pl.DataFrame(
            {
                "pool_id": [f"p{i:03d}" for i in range(N)],
                "batch": BATCH,
                "split": "pool",
                "task": "t",
                "messages": [
                    [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(N)
                ],
            }
        )
        db.replace_rows("examples", {"batch": BATCH}, examples)
    return store


def items() -> list[tuple[str, list[dict]]]:
    return [(f"p{i:03d}", [{"role": "user", "content": f"q{i}"}]) for i in range(N)]


def scorer_of(model_hash: str, scored: list[str], kill_after: int | None = None):
    """A scorer whose value is the example's number; it raises after ``kill_after`` chunks."""

    def make():
        chunks = []

        def score(chunk):
            if kill_after is not None and len(chunks) == kill_after:
                raise Killed("killed mid-run")
            chunks.append(chunk)
            scored.extend(i for i, _ in chunk)
            ids = [i for i, _ in chunk]
            return pl.DataFrame(
                {
                    "pool_id": ids,
                    "batch": BATCH,
                    "ifd_loss_ratio": [float(i[1:]) for i in ids],
                    "reason": "",
                    "model_hash": model_hash,
                    "code_version": "v1",
                }
            )

        return score

    return make


def stored(store) -> pl.DataFrame:
    with store.session() as db:
        return db.rows_matching("loss_scores", ["pool_id", "ifd_loss_ratio", "model_hash"], {}).sort("pool_id")


def test_a_killed_scoring_step_resumes_where_it_stopped(store):
    keep = {"model_hash": "m1", "code_version": "v1"}
    first: list[str] = []
    with pytest.raises(Killed):
        score_resumably(
            Context(), store, "loss_scores", items(), keep, scorer_of("m1", first, 1), "ifd_loss_ratio", BATCH
        )
    assert len(first) == CHUNK and stored(store).height == CHUNK  # the finished chunk is kept
    again: list[str] = []
    run = score_resumably(
        Context(), store, "loss_scores", items(), keep, scorer_of("m1", again), "ifd_loss_ratio", BATCH
    )
    assert sorted(again) == [f"p{i:03d}" for i in range(CHUNK, N)]  # only what was missing
    assert (run.computed, run.reused, run.stats.rows, run.stats.undefined) == (N - CHUNK, CHUNK, N, 0)
    assert run.stats.mean == pytest.approx(sum(range(N)) / N)
    rows = stored(store)
    assert rows["pool_id"].to_list() == [f"p{i:03d}" for i in range(N)]  # one row per example
    # a finished rerun builds no scorer (loads no model)
    assert (
        score_resumably(Context(), store, "loss_scores", items(), keep, lambda: 1 / 0, "ifd_loss_ratio", BATCH).computed
        == 0
    )


def test_rows_of_another_model_or_of_ids_that_left_are_removed(store):
    first: list[str] = []
    score_resumably(
        Context(),
        store,
        "loss_scores",
        items(),
        {"model_hash": "m1", "code_version": "v1"},
        scorer_of("m1", first),
        "ifd_loss_ratio",
        BATCH,
    )
    with store.session() as db:
        left = pl.DataFrame(schema={"pool_id": pl.String})  # no row: p000 left the batch
        db.replace_rows("examples", {"pool_id": "p000"}, left)
    second: list[str] = []
    run = score_resumably(
        Context(),
        store,
        "loss_scores",
        items()[1:],
        {"model_hash": "m2", "code_version": "v1"},
        scorer_of("m2", second),
        "ifd_loss_ratio",
        BATCH,
    )
    assert len(second) == N - 1 and run.reused == 0
    rows = stored(store)
    assert rows["model_hash"].unique().to_list() == ["m2"] and rows.height == N - 1
