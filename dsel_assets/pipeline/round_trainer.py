"""The trainer iterative selectors call between rounds (Diversify & Conquer, DiverseEvol):
LoRA SFT of the selection model on the current selection with the fine-tuning settings and
trainer every selection's model uses, then the trained model's loss on each selected example,
or its embedding of the whole pool."""

import copy
import time

import numpy as np

from dsel_assets.core.models.finetune import FinetuneConfig
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.model_embeddings import model_embeddings
from dsel_assets.core.models.sft import collate, encode_conversation, per_example_loss
from dsel_assets.core.models.warmup import train_lora


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
        # one short epoch per round; no dropout, so a round's scores depend only on its data
        self.config = config or FinetuneConfig(
            epochs=1, lr=2e-4, batch_size=8, max_length=256, lora=LoraSettings(r=8, alpha=32, dropout=0.0)
        )
        self.log = log
        self.history: list[dict] = []

    def _train(self, selected: list[int], round_index: int):
        started = time.perf_counter()
        encoded = [
            e
            for i in selected
            if (e := encode_conversation(self.tokenizer, self.conversations[i], self.config.max_length))
        ]
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
        """Mean-pooled last-layer embeddings of the whole pool by the trained model."""
        model = self._train(selected, round_index)
        return model_embeddings(model, self.tokenizer, self.conversations, "mean", self.config.max_length)
