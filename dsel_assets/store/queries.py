"""The questions the pipeline asks the state database, one method each of :class:`Questions`
(the read half of :class:`~dsel_assets.store.state.State`), answered alike on a DuckDB
connection and on a PostgreSQL (psycopg, autocommit) one; every write is in ``tables``.
Values are always bound; a table or column name a caller passes is checked to be a plain
identifier (or one of the declared columns) before it reaches the SQL text."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from .schema import TABLES, migrate
from .sql import check_identifiers, frame, in_list, one, run

_EXAMPLE_COLUMNS = {c.name for c in next(t for t in TABLES if t.name == "examples").columns}


def _columns(columns: Sequence[str]) -> str:
    unknown = [c for c in columns if c not in _EXAMPLE_COLUMNS]
    if unknown or not columns:
        raise ValueError(f"columns: {unknown or 'none'} not in examples ({sorted(_EXAMPLE_COLUMNS)})")
    return ", ".join(columns)


_SELECTION_COLUMNS = {c.name for c in next(t for t in TABLES if t.name == "selections").columns}


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    undefined: int  # rows with a reason instead of a value
    mean: float  # of ``value_column`` over the defined rows (NaN when none)
    reasons: list[tuple[str, int]]  # undefined rows per reason, most frequent first


@dataclass(frozen=True)
class BatchManifest:
    """What a pool batch is: one ingested file and how to read it."""

    batch: str
    source: str
    task: str
    split: str
    fmt: str | None
    layout: str | None
    mapping: str | None
    original_path: str
    stored_path: str
    sha256: str
    size_bytes: int


class Questions:
    """The read-only questions of :class:`~dsel_assets.store.state.State`."""

    conn: object

    def split_rows(
        self,
        split: str | Sequence[str],
        columns: Sequence[str] = ("pool_id", "messages"),
        order: Sequence[str] = ("pool_id",),
        batch: str | None = None,
    ) -> pl.DataFrame:
        """The examples of ``split`` (one name, or several) - of one ``batch`` when given -:
        ``columns``, ordered by ``order``."""
        splits = [split] if isinstance(split, str) else list(split)
        sql = f"SELECT {_columns(columns)} FROM examples WHERE {in_list(self.conn).format('split')}"
        params: list[object] = [splits]
        if batch is not None:
            sql += " AND batch = ?"
            params.append(batch)
        return frame(self.conn, f"{sql} ORDER BY {_columns(order)}", params)

    def batch_rows(self, batch: str, columns: Sequence[str] = ("pool_id", "messages")) -> pl.DataFrame:
        """The examples of one ingested batch (whatever its split), by id."""
        return frame(self.conn, f"SELECT {_columns(columns)} FROM examples WHERE batch = ? ORDER BY pool_id", [batch])

    def composition(self) -> pl.DataFrame:
        """Examples per split, source and task (the pool's make-up), sorted."""
        return frame(
            self.conn,
            "SELECT split, source, task, count(*) AS n FROM examples GROUP BY split, source, task "
            "ORDER BY split, source, task",
        )

    def quarantine_reasons(self) -> pl.DataFrame:
        """Quarantined records per reason, most frequent first."""
        return frame(self.conn, "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC, reason")

    def batch_counts(self, batch: str) -> tuple[int, list[tuple[str, int]], str | None]:
        """(accepted rows, quarantined rows per reason - most frequent first -, failure) of a batch."""
        accepted = int(run(self.conn, "SELECT count(*) FROM examples WHERE batch = ?", [batch])[0][0])
        reasons = run(
            self.conn,
            "SELECT reason, count(*) AS n FROM quarantine WHERE batch = ? GROUP BY reason ORDER BY n DESC, reason",
            [batch],
        )
        error = run(self.conn, "SELECT error FROM batches WHERE batch = ?", [batch])
        return accepted, [(r, int(n)) for r, n in reasons], error[0][0] if error else None

    def batch_names(self, split: str) -> list[str]:
        """The registered batches of ``split``, by name."""
        rows = run(self.conn, "SELECT batch FROM batches WHERE split = ? ORDER BY batch", [split])
        return [r[0] for r in rows]

    def batches_without_rows(self) -> list[tuple[str, str, int, str]]:
        """(batch, split, quarantined rows, why) of every batch with no accepted row, oldest first:
        its failure, 'not validated yet', or 'every record quarantined'."""
        return [
            (batch, split, int(n), why)
            for batch, split, n, why in run(
                self.conn,
                """SELECT b.batch, b.split, (SELECT count(*) FROM quarantine q WHERE q.batch = b.batch),
                          coalesce(b.error, CASE WHEN b.validated_at IS NULL THEN 'not validated yet'
                                                ELSE 'every record quarantined' END)
                   FROM batches b WHERE NOT EXISTS (SELECT 1 FROM examples e WHERE e.batch = b.batch)
                   ORDER BY b.registered_at""",
            )
        ]

    def example_origin(self, pool_id: str) -> dict | None:
        """An example's stored record with its raw file's original path and sha256, or None."""
        found = frame(
            self.conn,
            "SELECT e.pool_id, e.batch, e.split, e.source, e.task, e.position, e.raw, e.meta, b.original_path, "
            "b.sha256 FROM examples e JOIN batches b ON b.batch = e.batch WHERE e.pool_id = ?",
            [pool_id],
        )
        return found.to_dicts()[0] if found.height else None

    def rows_of_id(self, table: str, pool_id: str) -> list[dict]:
        """The rows of ``table`` (a name from the catalog, checked) that belong to ``pool_id``."""
        check_identifiers(table)
        return frame(self.conn, f"SELECT * FROM {table} WHERE pool_id = ?", [pool_id]).to_dicts()

    def source_rows(self, source: str, columns: Sequence[str] = ("pool_id", "messages")) -> pl.DataFrame:
        """The examples ingested from ``source`` (any split), by id."""
        return frame(self.conn, f"SELECT {_columns(columns)} FROM examples WHERE source = ? ORDER BY pool_id", [source])

    def meta_field(self, split: str, field: str) -> dict[str, object]:
        """pool id -> the decoded value of ``field`` in each example's ``meta`` JSON (None when absent)."""
        rows = run(self.conn, "SELECT pool_id, meta FROM examples WHERE split = ?", [split])
        return {pool_id: (json.loads(meta) if meta else {}).get(field) for pool_id, meta in rows}

    def query_subtasks(self) -> dict[str, str | None]:
        """Query id -> its LESS subtask (``meta.subtask`` as text; None when it has none)."""
        return {q: None if v is None else str(v) for q, v in self.meta_field("query", "subtask").items()}

    def messages_of(self, ids: Sequence[str]) -> dict[str, list[dict]]:
        """pool id -> messages, for the given ids (those that exist), in id order."""
        sql = f"SELECT pool_id, messages FROM examples WHERE {in_list(self.conn).format('pool_id')} ORDER BY pool_id"
        return dict(run(self.conn, sql, [list(ids)]))

    def split_task_counts(self) -> dict[tuple[str, str], int]:
        """(split, task) -> number of examples."""
        rows = run(self.conn, "SELECT split, task, count(*) FROM examples GROUP BY split, task")
        return {(split, task): n for split, task, n in rows}

    def count_outside_split(self, ids: Sequence[str], split: str) -> int:
        """How many of ``ids`` are stored in a split other than ``split`` (a leak check)."""
        sql = f"SELECT count(*) FROM examples WHERE split <> ? AND {in_list(self.conn).format('pool_id')}"
        return int(run(self.conn, sql, [split, list(ids)])[0][0])

    def finetuned_models_of(self, method: str, base_model_hash: str) -> pl.DataFrame:
        """The stored models of ``method`` fine-tuned from base model ``base_model_hash``: key,
        budget, adapter path, training examples, selection and training seeds; smallest training set
        first."""
        return frame(
            self.conn,
            "SELECT model_key, budget, path, examples, selection_seed, seed FROM finetuned_models "
            "WHERE method = ? AND base_model_hash = ? ORDER BY examples, selection_seed, seed",
            [method, base_model_hash],
        )

    def eval_keys(self) -> set[str]:
        """The evaluations already stored (model x eval set x settings keys)."""
        return {r[0] for r in run(self.conn, "SELECT DISTINCT eval_key FROM eval_scores")}

    def eval_task_scores(self, eval_key: str) -> list[dict]:
        """Per task of one stored evaluation: n, metric, score, loss."""
        return frame(
            self.conn, "SELECT task, n, metric, score, loss FROM eval_scores WHERE eval_key = ?", [eval_key]
        ).to_dicts()

    def latest_warmup(self) -> tuple[str, str] | None:
        """(key, path) of the most recently recorded warmup, or None."""
        rows = run(self.conn, "SELECT warmup, path FROM warmups ORDER BY created_at DESC LIMIT 1")
        return rows[0] if rows else None

    def sibling_warmups(self, key: str) -> list[str]:
        """The warmups recorded for the same pool version and base model as warmup ``key`` (itself
        included; other seeds or settings): the warmups whose gradient features stay valid beside it."""
        rows = run(
            self.conn,
            "SELECT w.warmup FROM warmups w JOIN warmups k ON k.warmup = ? "
            "WHERE w.pool_version = k.pool_version AND w.model_hash = k.model_hash ORDER BY w.warmup",
            [key],
        )
        return [r[0] for r in rows]

    def less_scores(self) -> pl.DataFrame:
        """LESS's score of each pool id per target task (pool_id, task, score), as influence wrote them."""
        return frame(self.conn, "SELECT pool_id, task, score FROM less_scores")

    def similarity_columns(self, table: str) -> pl.DataFrame:
        """The query columns (col, task, subtask) of a pool x query similarity, from its columns table
        (a plain identifier from the representation registry)."""
        check_identifiers(table)
        return frame(self.conn, f"SELECT col, task, subtask FROM {table} ORDER BY col")

    def label_sets(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """MIG's labels: (pool_id, label) pairs, and the vocabulary (label, embedding) by label."""
        pairs = frame(self.conn, "SELECT pool_id, label FROM labels")
        return pairs, frame(self.conn, "SELECT label, embedding FROM label_vocab ORDER BY label")

    def method_selections(
        self, method: str, columns: Sequence[str] = ("budget", "selection_seed", "pool_id", "pool_version")
    ) -> pl.DataFrame:
        """The stored selections of ``method`` (``columns`` of the selections table), in rank order
        within each (budget, selection seed)."""
        unknown = [c for c in columns if c not in _SELECTION_COLUMNS]
        if unknown or not columns:
            raise ValueError(f"columns: {unknown or 'none'} not in selections")
        return frame(
            self.conn,
            f"SELECT {', '.join(columns)} FROM selections WHERE method = ? ORDER BY budget, selection_seed, rank",
            [method],
        )

    def selection_replicates(self, methods: Sequence[str]) -> pl.DataFrame:
        """One row per stored selection replicate of ``methods``: method, budget, selection_seed and
        its diagnostics (one JSON per replicate); by method, budget and seed."""
        if not methods:
            names = ("method", "budget", "selection_seed", "diagnostics")
            return pl.DataFrame(schema=dict(zip(names, (pl.Utf8, pl.Utf8, pl.Int32, pl.Utf8), strict=True)))
        member = in_list(self.conn).format("method")
        return frame(
            self.conn,
            f"""SELECT method, budget, selection_seed, max(diagnostics) AS diagnostics FROM selections WHERE {member}
                GROUP BY method, budget, selection_seed ORDER BY method, budget, selection_seed""",
            [list(methods)],
        )

    def selection_configs(self, methods: Sequence[str]) -> dict[str, dict]:
        """The method parameters the latest stored selection of each of ``methods`` ran with (one row's
        ``config``; replicates differ in their seed only); a method with no stored selection is absent."""
        if not methods:
            return {}
        member = in_list(self.conn).format("method")
        sql = f"SELECT method, config FROM selections WHERE {member} ORDER BY created_at DESC"
        rows = frame(self.conn, sql, [list(methods)])
        out: dict[str, dict] = {}
        for method, config in rows.iter_rows():
            if method not in out and config:
                out[method] = json.loads(config)
        return out

    def stored_selections(self) -> pl.DataFrame:
        """One row per stored selection replicate (method, budget, selection_seed): rows, k,
        eligible, pool version, config, diagnostics, MLflow run and creation time; by method, budget
        and seed."""
        return frame(
            self.conn,
            """SELECT method, budget, selection_seed, count(*) AS n_rows, max(k) AS k, max(eligible) AS eligible,
                      max(pool_version) AS pool_version, max(config) AS config, max(diagnostics) AS diagnostics,
                      max(mlflow_run_id) AS mlflow_run_id, max(created_at) AS created_at
               FROM selections GROUP BY method, budget, selection_seed ORDER BY method, budget, selection_seed""",
        )

    def selection_export_rows(self, method: str, budget: str, selection_seed: int) -> pl.DataFrame:
        """The rows of one stored selection replicate in rank order, each with its example (task,
        source, batch, messages, the record as read, its file and position) and its batch's original
        file path, format and layout; example columns are null where the pool no longer holds the id."""
        return frame(
            self.conn,
            """SELECT s.rank, s.pool_id, s.score, e.task, e.source, e.batch, e.messages, e.raw, e.position,
                      e.file_path AS stored_file, e.file_sha256, b.original_path AS source_file, b.fmt, b.layout
               FROM selections s
               LEFT JOIN examples e ON e.pool_id = s.pool_id AND e.split = 'pool'
               LEFT JOIN batches b ON b.batch = e.batch
               WHERE s.method = ? AND s.budget = ? AND s.selection_seed = ? ORDER BY s.rank""",
            [method, budget, selection_seed],
        )

    def warmup_identity(self, key: str | None = None, before: datetime | None = None) -> dict | None:
        """The warmup ``key`` (model, model hash), else the latest one recorded at or before ``before``
        (any time when None); None when there is none."""
        if key is not None:
            rows = run(self.conn, "SELECT warmup, model, model_hash FROM warmups WHERE warmup = ?", [key])
        elif before is not None:
            rows = run(
                self.conn,
                "SELECT warmup, model, model_hash FROM warmups WHERE created_at <= ? ORDER BY created_at DESC LIMIT 1",
                [before],
            )
        else:
            rows = run(self.conn, "SELECT warmup, model, model_hash FROM warmups ORDER BY created_at DESC LIMIT 1")
        return dict(zip(("warmup", "model", "model_hash"), rows[0], strict=True)) if rows else None

    def score_models(self, table: str) -> list[tuple[str, str]]:
        """The distinct (model, model hash) pairs of score table ``table`` (a plain identifier)."""
        check_identifiers(table)
        rows = run(self.conn, f"SELECT DISTINCT model, model_hash FROM {table} ORDER BY model, model_hash")
        return [(m, h) for m, h in rows]

    def selection_ranks(self, method: str, pool_id: str) -> pl.DataFrame:
        """Per stored budget and selection seed (replicate) of ``method``: its size k, how many were
        selected, ``pool_id``'s rank and score there (null when not selected), pool version and MLflow run."""
        return frame(
            self.conn,
            """SELECT s.budget, s.selection_seed, s.k, (SELECT count(*) FROM selections t WHERE t.method = s.method
                      AND t.budget = s.budget AND t.selection_seed = s.selection_seed) AS selected,
                      r.rank, r.score, s.pool_version, s.mlflow_run_id
               FROM (SELECT DISTINCT method, budget, selection_seed, k, pool_version, mlflow_run_id
                     FROM selections WHERE method = ?) s
               LEFT JOIN selections r ON r.method = s.method AND r.budget = s.budget
                    AND r.selection_seed = s.selection_seed AND r.pool_id = ?
               ORDER BY s.budget, s.selection_seed""",
            [method, pool_id],
        )

    def selection_summary(self, method: str) -> pl.DataFrame:
        """Per stored budget of ``method``: rows selected, the tasks they come from, score range."""
        return frame(
            self.conn,
            """SELECT s.budget, count(*) AS selected, string_agg(DISTINCT e.task, ', ') AS tasks,
                      min(s.score) AS min_score, max(s.score) AS max_score
               FROM selections s JOIN examples e ON e.pool_id = s.pool_id WHERE s.method = ?
               GROUP BY s.budget ORDER BY selected""",
            [method],
        )

    def report(self, name: str) -> pl.DataFrame:
        """A report table written whole by its asset (``selection_report``, ``comparison_report``)."""
        if name not in ("selection_report", "comparison_report"):
            raise ValueError(f"report: {name!r} is not selection_report or comparison_report")
        order = " ORDER BY method, size" if name == "selection_report" else ""
        return frame(self.conn, f"SELECT * FROM {name}{order}")

    def selected_ids(self, method: str) -> list[str]:
        """Every pool id any stored selection of ``method`` holds (any budget or seed), sorted."""
        rows = run(self.conn, "SELECT DISTINCT pool_id FROM selections WHERE method = ? ORDER BY pool_id", [method])
        return [r[0] for r in rows]

    def evaluated_ids(self, method: str) -> list[str]:
        """The eval examples the models of ``method`` were scored on, sorted."""
        rows = run(self.conn, "SELECT DISTINCT pool_id FROM eval_examples WHERE method = ? ORDER BY pool_id", [method])
        return [r[0] for r in rows]

    def pool_ids_of_version(self, version: str) -> set[str] | None:
        """The pool ids of a recorded pool version (its batches' pool rows); None when not recorded."""
        found = run(self.conn, "SELECT batches FROM pool_versions WHERE pool_version = ? LIMIT 1", [version])
        if not found:
            return None
        member = in_list(self.conn).format("batch")
        return {
            r[0]
            for r in run(self.conn, f"SELECT pool_id FROM examples WHERE split = 'pool' AND {member}", [found[0][0]])
        }

    def rows_matching(self, table: str, columns: Sequence[str], match: dict[str, object]) -> pl.DataFrame:
        """``columns`` of the rows of ``table`` whose ``match`` columns equal the given values (names
        are the caller's own declared identifiers, checked; values bound)."""
        check_identifiers(table, *columns, *match)
        where = " AND ".join(f"{c} = ?" for c in match) or "TRUE"
        return frame(self.conn, f"SELECT {', '.join(columns)} FROM {table} WHERE {where}", list(match.values()))

    def score_summary(self, table: str, value_column: str, batch: str | None = None) -> ScoreSummary:
        """Rows, undefined rows and their reasons, and the mean value of a score table (or of one
        batch of it)."""
        check_identifiers(table, value_column)
        where, params = ("WHERE batch = ?", [batch]) if batch is not None else ("", [])
        n, undefined, mean = run(
            self.conn,
            f"SELECT count(*), count(*) FILTER (WHERE reason <> ''), avg({value_column}) FILTER (WHERE reason = '') "
            f"FROM {table} {where}",
            params,
        )[0]
        reason_filter = f"{where} AND" if where else "WHERE"
        reasons = run(
            self.conn,
            f"SELECT reason, count(*) AS n FROM {table} {reason_filter} reason <> '' "
            "GROUP BY reason ORDER BY n DESC, reason",
            params,
        )
        return ScoreSummary(
            int(n), int(undefined), math.nan if mean is None else float(mean), [(r, int(k)) for r, k in reasons]
        )

    def score_columns(self, table: str, columns: Sequence[str], defined_only: bool = False) -> pl.DataFrame:
        """``pool_id`` and ``columns`` of every row of score table ``table``; with ``defined_only``
        a value is null where its row records a reason (the score is undefined there)."""
        check_identifiers(table, *columns)
        select = [f"CASE WHEN reason = '' THEN {c} END AS {c}" if defined_only else c for c in columns]
        return frame(self.conn, f"SELECT pool_id, {', '.join(select)} FROM {table}")

    def selected_examples(self) -> pl.DataFrame:
        """Every stored selection row with its example's task and ``meta`` (method, budget, rank,
        pool_id, task, meta), in rank order within each (method, budget)."""
        return frame(
            self.conn,
            """SELECT s.method, s.budget, s.rank, s.pool_id, e.task, e.meta
               FROM selections s JOIN examples e ON e.pool_id = s.pool_id
               WHERE e.split = 'pool' ORDER BY s.method, s.budget, s.rank""",
        )

    def eval_rows_with_models(self, base: str, model_hash: str | None, eval_version: str | None = None) -> pl.DataFrame:
        """One row per (stored model, eval example): method, budget, selection size (the stored k, else
        the model's training examples), selection and training seeds, task, pool_id, loss, score,
        metric - for every model in ``finetuned_models`` and for the untouched ``base`` model, of base
        model ``model_hash`` only (None: of every base model), so two models' rows never meet, and of
        evaluations of eval sample ``eval_version`` only (None: of any)."""
        return frame(
            self.conn,
            """SELECT e.method, e.budget,
                      coalesce((SELECT max(s.k) FROM selections s WHERE s.method = e.method AND s.budget = e.budget),
                               f.examples, 0) AS train_size,
                      coalesce(f.selection_seed, 0) AS selection_seed, coalesce(f.seed, 0) AS seed,
                      e.task, e.pool_id, e.loss, e.score, e.metric
               FROM eval_examples e LEFT JOIN finetuned_models f ON f.model_key = e.model_key
               WHERE ((f.model_key IS NOT NULL AND (CAST(? AS TEXT) IS NULL OR f.base_model_hash = ?))
                      OR (e.method = ? AND (CAST(? AS TEXT) IS NULL OR e.model_key = ?)))
                 AND (CAST(? AS TEXT) IS NULL
                      OR e.eval_key IN (SELECT eval_key FROM eval_scores WHERE eval_version = ?))""",
            [model_hash, model_hash, base, model_hash, f"{base}-{model_hash}", eval_version, eval_version],
        )

    def find_batch_by_sha(self, sha256: str, split: str) -> str | None:
        migrate(self.conn)
        row = one(self.conn, "SELECT batch FROM batches WHERE sha256 = ? AND split = ?", [sha256, split])
        return row[0] if row else None

    def get_batch(self, batch: str) -> BatchManifest:
        migrate(self.conn)
        names = list(BatchManifest.__dataclass_fields__)
        row = one(self.conn, f"SELECT {', '.join(names)} FROM batches WHERE batch = ?", [batch])
        if row is None:
            raise KeyError(f"batch: {batch!r} is not registered; run `dsel ingest PATH` first")
        return BatchManifest(**dict(zip(names, row, strict=True)))

    def ids_before(self, batch: str) -> dict[str, str]:
        """Ids stored by batches registered before ``batch`` -> "batch (split)": the rows a new
        batch must not repeat. Ids stay unique across the whole store, whatever the split."""
        rows = run(
            self.conn,
            """SELECT e.pool_id, b.batch, b.split FROM examples e JOIN batches b ON b.batch = e.batch
               WHERE b.registered_at < (SELECT registered_at FROM batches WHERE batch = ?)""",
            [batch],
        )
        return {pool_id: f"batch {name} ({split})" for pool_id, name, split in rows}

    def is_validated(self, batch: str) -> bool:
        """Whether the batch's validation finished (its rows are in ``examples`` / ``quarantine``)."""
        row = one(self.conn, "SELECT validated_at IS NOT NULL FROM batches WHERE batch = ?", [batch])
        return bool(row and row[0])

    def pool_version(self) -> tuple[str, list[str]]:
        """Hash of the manifests of every materialized pool batch, and those batch keys."""
        rows = run(
            self.conn,
            """SELECT b.batch, b.sha256, b.source, b.task, b.layout, b.mapping FROM batches b
               WHERE b.split = 'pool' AND EXISTS (SELECT 1 FROM examples e WHERE e.batch = b.batch)
               ORDER BY b.batch""",
        )
        digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
        return digest, [r[0] for r in rows]
