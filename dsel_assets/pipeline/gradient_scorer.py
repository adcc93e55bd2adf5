"""LESS scores on demand (the reward ClusterUCB draws): per-example Adam gradient features of
only the requested pool examples, under every checkpoint of the latest warmup, scored
against the stored query gradient features exactly as the influence asset scores the whole
pool (docs/methods/less.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc

from dsel_assets.core.influence import checkpoint_weights, less_score_table
from dsel_assets.core.models.features import FeatureConfig, gradient_features
from dsel_assets.core.models.warmup import ADAPTER_DIR, OPTIMIZER_FILE, load_checkpoint
from dsel_assets.pipeline.names import grad_features_dataset
from dsel_assets.pipeline.stored import latest_warmup_manifest, vector_matrix
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import SelectionModel
from resources.store import StateStore
from resources.tracking import DatasetRef


def _optimizer_state(path: Path) -> dict[str, dict]:
    """The checkpoint's Adam moments by parameter name (the layout ``load_checkpoint`` reads)."""
    from safetensors.torch import load_file

    state: dict[str, dict] = {"exp_avg": {}, "exp_avg_sq": {}}
    for key, tensor in load_file(str(path / OPTIMIZER_FILE)).items():
        kind, name = key.split("/", 1)
        state[kind][name] = tensor
    return state


class StoredFeatures:
    """Pool gradient features a run already stored for one warmup (pinned dataset version):
    examples with a feature at every checkpoint are read back, not recomputed - the score is
    the same either way, and reading is ~1,000x cheaper than a backward pass."""

    def __init__(self, lance: LanceStore, name: str, version: int, warmup: str):
        table = lance.read(name, ["pool_id", "warmup", "checkpoint"], version=version)
        self.lance, self.name, self.version = lance, name, version
        self.position: dict[tuple[str, int], int] = {
            (pid, int(epoch)): position
            for position, (pid, owner, epoch) in enumerate(
                zip(*(table.column(c).to_pylist() for c in ("pool_id", "warmup", "checkpoint")), strict=True)
            )
            if owner == warmup
        }

    def read(self, ids: Sequence[str], epochs: Sequence[int]) -> tuple[list[str], dict[int, np.ndarray]]:
        """(the ids stored at every epoch, {epoch: their features in that order})."""
        found = [pid for pid in ids if all((pid, e) in self.position for e in epochs)]
        if not found:
            return [], {}
        features = {}
        for epoch in epochs:
            rows = self.lance.take(self.name, [self.position[(p, epoch)] for p in found], ["vector"], self.version)
            features[epoch] = vector_matrix(rows.column("vector")).astype(np.float32)
        return found, features


class OnDemandLessScorer:
    """``scorer(ids, task)``: the LESS score of each pool id for ``task`` (NaN when truncation
    leaves the example no response token), computing gradient features for those ids only -
    or reading them, where ``stored`` already holds them at every checkpoint.

    Memory stays bounded: one copy of the model whose LoRA weights are swapped per checkpoint
    (adapters and Adam moments are small), the query features, features for one chunk at a
    time, and a float per task for every example already scored - asked again (the next
    budget of the same run), it is answered from that cache. ``examples_computed`` counts the
    examples whose gradients were actually computed, ``examples_read`` those read from
    ``stored``."""

    def __init__(
        self,
        model,
        tokenizer,
        messages: Mapping[str, list[dict]],
        checkpoints: Sequence[tuple[int, Path]],
        weights: Mapping[int, float],
        query_features: Mapping[int, np.ndarray],
        query_tasks: Sequence[str],
        query_subtasks: Sequence[str | None],
        config: FeatureConfig,
        stored: StoredFeatures | None = None,
    ):
        from peft.utils import load_peft_weights

        if not checkpoints:
            raise ValueError("less_scorer: the warmup has no checkpoints")
        self.model, _ = load_checkpoint(model, checkpoints[0][1])
        self.tokenizer, self.messages, self.config = tokenizer, messages, config
        self.checkpoints = [(epoch, load_peft_weights(str(path / ADAPTER_DIR))) for epoch, path in checkpoints]
        self.states = {epoch: _optimizer_state(path) for epoch, path in checkpoints}
        self.weights = dict(weights)
        self.query_features = {e: np.asarray(q, dtype=np.float32) for e, q in query_features.items()}
        self.query_tasks, self.query_subtasks = list(query_tasks), list(query_subtasks)
        self.tasks = list(dict.fromkeys(query_tasks))
        self.cache: dict[str, np.ndarray] = {}  # pool id -> score per task (NaN: no feature)
        self.stored = stored
        self.examples_computed = 0
        self.examples_read = 0

    def __call__(self, ids: Sequence[str], task: str) -> np.ndarray:
        if task not in self.tasks:
            raise ValueError(f"task: {task!r} is not one of {sorted(self.tasks)}")
        unknown = [i for i in ids if i not in self.messages]
        if unknown:
            raise KeyError(f"less_scorer: {unknown[0]} is not a pool id")
        todo = list(dict.fromkeys(i for i in ids if i not in self.cache))
        if todo and self.stored is not None:
            found, features = self.stored.read(todo, [epoch for epoch, _ in self.checkpoints])
            if found:
                similarity = sum(self.weights[e] * (f @ self.query_features[e].T) for e, f in features.items())
                self.cache.update(zip(found, self._by_task(similarity), strict=True))
                self.examples_read += len(found)
                todo = [i for i in todo if i not in self.cache]
        if todo:
            self.cache.update(zip(todo, self._compute(todo), strict=True))
            self.examples_computed += len(todo)
        column = self.tasks.index(task)
        return np.array([self.cache[i][column] for i in ids], dtype=np.float64)

    def _compute(self, ids: list[str]) -> np.ndarray:
        """[len(ids), tasks] LESS scores: checkpoint-weighted cosine with every query, then
        mean within subtask and max over subtasks."""
        from peft import set_peft_model_state_dict

        row_of = {pid: i for i, pid in enumerate(ids)}
        n_queries = next(iter(self.query_features.values())).shape[0]
        similarity = np.zeros((len(ids), n_queries), dtype=np.float32)
        seen = np.zeros(len(ids), dtype=int)
        items = [(pid, self.messages[pid]) for pid in ids]
        for epoch, adapter in self.checkpoints:
            loaded = set_peft_model_state_dict(self.model, adapter)
            if loaded.unexpected_keys:
                raise ValueError(f"less_scorer: checkpoint {epoch} has unknown adapter weights")
            for chunk in gradient_features(self.model, self.tokenizer, items, self.config, self.states[epoch]):
                rows = [row_of[pid] for pid in chunk.ids]
                similarity[rows] += self.weights[epoch] * (
                    chunk.features.astype(np.float32) @ self.query_features[epoch].T
                )
                seen[rows] += 1
        scores = np.full((len(ids), len(self.tasks)), np.nan)
        done = seen == len(self.checkpoints)
        scores[done] = self._by_task(similarity[done])
        return scores

    def _by_task(self, similarity: np.ndarray) -> np.ndarray:
        """[rows, tasks] LESS scores from checkpoint-weighted query similarities."""
        return less_score_table(similarity, self.query_tasks, self.query_subtasks, self.tasks)


def load_less_scorer(
    lance: LanceStore,
    store: StateStore,
    pool_ids: list[str],
    grad_settings: GradientSettings,
    selection_model: SelectionModel,
) -> tuple[OnDemandLessScorer, DatasetRef]:
    """The scorer for the latest warmup and its stored query features (the inputs of the
    influence asset, less the pool features), and its DatasetRef for lineage."""

    with store.session() as db:
        warmup, _, manifest = latest_warmup_manifest(db)
        pool_rows = db.split_rows("pool")
        subtask_of = db.query_subtasks()
    wanted = set(pool_ids)
    messages = {
        pid: m for pid, m in zip(pool_rows["pool_id"], pool_rows["messages"].to_list(), strict=True) if pid in wanted
    }
    weights = checkpoint_weights({c["epoch"]: c["lr_mean"] for c in manifest["checkpoints"]})
    checkpoints = sorted((c["epoch"], Path(c["path"])) for c in manifest["checkpoints"])
    name = grad_features_dataset("query", grad_settings.suffix())
    version = lance.version(name)
    if version is None:
        raise RuntimeError(f"{name}: no query features yet; materialize query_grad_features first")
    query_features_table = lance.read(name, ["pool_id", "task", "checkpoint", "vector"], equal={"warmup": warmup})
    if query_features_table.num_rows == 0:
        raise RuntimeError(f"{name}: no query features for warmup {warmup}; materialize query_grad_features")
    columns = (
        pl.from_arrow(query_features_table.select(["pool_id", "task", "checkpoint"]))
        .filter(pl.col("checkpoint") == checkpoints[0][0])
        .sort(["task", "pool_id"])
    )
    column_of = {q: i for i, q in enumerate(columns["pool_id"])}
    features = {}
    for epoch, _ in checkpoints:
        part = query_features_table.filter(pc.equal(query_features_table.column("checkpoint"), epoch))
        order = np.argsort([column_of[q] for q in part.column("pool_id").to_pylist()])
        features[epoch] = vector_matrix(part.column("vector"))[order]
    tasks = columns["task"].to_list()
    subtasks = [subtask_of.get(q) for q in columns["pool_id"]]
    pool_name = grad_features_dataset("pool", grad_settings.suffix())
    pool_version = lance.version(pool_name)
    stored = None if pool_version is None else StoredFeatures(lance, pool_name, pool_version, warmup)
    model, tokenizer = selection_model.load()
    scorer = OnDemandLessScorer(
        model,
        tokenizer,
        messages,
        checkpoints,
        weights,
        features,
        tasks,
        subtasks,
        grad_settings.feature_config(),
        stored,
    )
    return scorer, DatasetRef("less_scorer", lance.uri(name), f"{warmup}-v{version}")
