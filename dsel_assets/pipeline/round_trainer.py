"""The trainers iterative selectors call between rounds: LoRA SFT of the selection model on the
current selection with the fine-tuning settings and trainer every selection's model uses, then
the trained model's loss on each selected example or its embedding of the whole pool (Diversify
& Conquer, DiverseEvol), or, epoch by epoch in one run, its LESS scores (ClusterUCB)."""

import copy
import time
from dataclasses import replace

import numpy as np

from dsel_assets.core.influence import less_score_table
from dsel_assets.core.models.features import FeatureConfig, gradient_features
from dsel_assets.core.models.finetune import FinetuneConfig
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.model_embeddings import model_embeddings
from dsel_assets.core.models.sft import collate, encode_conversation, per_example_loss
from dsel_assets.core.models.warmup import adam_moments, train_lora


def round_config() -> FinetuneConfig:
    """One short epoch per round, no dropout, so a round's result depends only on its data."""
    return FinetuneConfig(
        epochs=1, lr=2e-4, batch_size=8, max_length=256, lora=LoraSettings(r=8, alpha=32, dropout=0.0)
    )


def encoded_rows(tokenizer, conversations: list[list[dict]], rows: list[int], max_length: int) -> list:
    """The training encodings of pool ``rows``, less those truncation leaves no response token."""
    return [e for i in rows if (e := encode_conversation(tokenizer, conversations[i], max_length))]


class LoraRoundTrainer:
    """Implements ``core.select.iterative.RoundTrainer``; ``history`` records every round."""

    def __init__(
        self,
        base_model,
        tokenizer,
        conversations: list[list[dict]],
        config: FinetuneConfig | None = None,
        log=print,
        max_tokens: int | None = None,
    ):
        self.base, self.tokenizer, self.conversations = base_model, tokenizer, conversations
        self.max_tokens = max_tokens  # padded tokens per training micro-batch
        self.config = config or round_config()
        self.log = log
        self.history: list[dict] = []

    def _train(self, selected: list[int], round_index: int):
        started = time.perf_counter()
        encoded = encoded_rows(self.tokenizer, self.conversations, selected, self.config.max_length)
        model, curve = train_lora(
            copy.deepcopy(self.base),
            encoded,
            self.config,
            self.tokenizer.pad_token_id,
            self.log,
            label=f"round {round_index}",
            max_tokens=self.max_tokens,
        )
        self.history.append(
            {
                "round": round_index,
                "examples": len(encoded),
                "steps": len(curve),
                "final_loss": curve[-1]["loss"],
                "seconds": time.perf_counter() - started,
            }
        )
        return model

    def train_and_score(self, selected: list[int], round_index: int) -> np.ndarray:
        """The trained model's response loss on each selected example (higher = still hard)."""
        import torch

        model = self._train(selected, round_index)
        scores = np.full(len(selected), np.nan)
        with torch.no_grad():
            for row, i in enumerate(selected):
                enc = encode_conversation(self.tokenizer, self.conversations[i], self.config.max_length)
                if enc is not None:
                    scores[row] = per_example_loss(model, collate([enc], self.tokenizer.pad_token_id)).item()
        finite = scores[np.isfinite(scores)]
        self.history[-1]["mean_score"] = float(finite.mean()) if len(finite) else float("nan")
        return np.where(np.isfinite(scores), scores, finite.mean() if len(finite) else 0.0)

    def train_and_embed(self, selected: list[int], round_index: int) -> np.ndarray:
        """Mean-pooled last-layer embeddings of the whole pool by the trained model, not
        normalised: DiverseEvol's reference runs k-center on the raw vectors."""
        model = self._train(selected, round_index)
        return model_embeddings(
            model, self.tokenizer, self.conversations, "mean", self.config.max_length, normalise=False
        )


class LoraEpochTrainer:
    """Implements ``core.select.iterative.EpochTrainer``: one LoRA run on the selection model
    whose data changes between epochs (ClusterUCB's reference trains each epoch on the previous
    reselection). After each epoch but the last the scorer gives LESS scores under the model as
    trained: the queries' plain gradients and the pool rows' gradients preconditioned by the
    run's own Adam moments, cosine, aggregated per task as the influence asset does."""

    def __init__(
        self,
        base_model,
        tokenizer,
        conversations: list[list[dict]],
        queries: list[list[dict]],
        query_tasks: list[str],
        query_subtasks: list[str | None],
        features: FeatureConfig,
        config: FinetuneConfig | None = None,
        log=print,
        max_tokens: int | None = None,
    ):
        self.base, self.tokenizer, self.conversations = base_model, tokenizer, conversations
        self.queries, self.query_tasks, self.query_subtasks = queries, query_tasks, query_subtasks
        self.tasks = list(dict.fromkeys(query_tasks))
        self.features, self.config = features, config or round_config()
        self.log, self.max_tokens = log, max_tokens
        self.history: list[dict] = []

    def scorer(self, model, moments: dict[str, dict]):
        """``(rows, task) -> LESS scores`` of pool rows under ``model`` and its Adam ``moments``
        (each row computed once; NaN where truncation leaves it no response token)."""
        query_items = [(str(i), m) for i, m in enumerate(self.queries)]
        chunks = list(gradient_features(model, self.tokenizer, query_items, self.features))
        found = [int(q) for chunk in chunks for q in chunk.ids]  # longest first: back to query order
        if len(found) < len(query_items):
            raise RuntimeError(f"less: {len(query_items) - len(found)} query rows keep no response token")
        query = np.empty((len(found), chunks[0].features.shape[1]), dtype=np.float32)
        query[found] = np.concatenate([c.features for c in chunks])
        cache: dict[int, np.ndarray] = {}

        def score(rows: np.ndarray, task: str) -> np.ndarray:
            todo = [int(r) for r in dict.fromkeys(np.asarray(rows).tolist()) if int(r) not in cache]
            items = [(str(r), self.conversations[r]) for r in todo]
            for chunk in gradient_features(model, self.tokenizer, items, self.features, moments):
                similarity = chunk.features.astype(np.float32) @ query.T
                table = less_score_table(similarity, self.query_tasks, self.query_subtasks, self.tasks)
                cache.update(zip((int(i) for i in chunk.ids), table, strict=True))
            cache.update((r, np.full(len(self.tasks), np.nan)) for r in todo if r not in cache)
            column = self.tasks.index(task)
            return np.array([cache[int(r)][column] for r in rows], dtype=np.float64)

        return score

    def train_epochs(self, first: list[int], epochs: int, reselect) -> list[int]:
        current = list(first)

        def next_epoch(epoch: int, model, optimizer) -> list:
            nonlocal current
            started = time.perf_counter()
            current = list(reselect(epoch, self.scorer(model, adam_moments(model, optimizer))))
            optimizer.zero_grad(set_to_none=True)  # the features' backward passes leave nothing behind
            self.history.append({"round": epoch, "examples": len(current), "seconds": time.perf_counter() - started})
            return encoded_rows(self.tokenizer, self.conversations, current, self.config.max_length)

        train_lora(
            copy.deepcopy(self.base),
            encoded_rows(self.tokenizer, self.conversations, current, self.config.max_length),
            replace(self.config, epochs=epochs),
            self.tokenizer.pad_token_id,
            self.log,
            label="cluster_ucb",
            max_tokens=self.max_tokens,
            next_epoch=next_epoch,
        )
        return current
