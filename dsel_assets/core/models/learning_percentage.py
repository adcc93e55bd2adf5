"""Learning percentage (docs/methods/small2large.md): train a small model on the whole pool
for ``n`` epochs, recording each example's response perplexity before training (P_0) and
after every epoch (P_1..P_n); ``LP(i) = (P_(i-1) - P_i) / (P_0 - P_n)``. LP(1) near 1 = the
example was learned early (easy); Small2Large keeps the lowest LP(1) per cluster."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .batching import Batching
from .sft import collate, encode_conversation, per_example_loss
from .warmup import WarmupConfig, train_lora


def perplexities(model, encoded, pad_id: int, batch_size: int | Batching = 8) -> np.ndarray:
    """exp(mean response-token loss) per example (model in eval mode, no gradients)."""
    import torch

    out = np.empty(len(encoded))
    was_training = model.training
    model.eval()

    def forward(group):
        with torch.no_grad():
            return per_example_loss(model, collate([encoded[i] for i in group], pad_id)).float().cpu().numpy()

    for group, losses in Batching.of(batch_size).run([len(e.input_ids) for e in encoded], forward):
        out[group] = np.exp(losses)
    model.train(was_training)
    return out


def learning_percentage(p: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """LP [N, n] from perplexities [N, n+1]; rows with P_0 == P_n (or non-finite) are NaN with a reason."""
    total = p[:, 0] - p[:, -1]
    steps = p[:, :-1] - p[:, 1:]
    undefined = ~np.isfinite(total) | (np.abs(total) < 1e-12) | ~np.isfinite(steps).all(axis=1)
    lp = np.where(undefined[:, None], np.nan, steps / np.where(undefined, 1.0, total)[:, None])
    reasons = ["P_0 == P_n: learning percentage undefined" if u else "" for u in undefined]
    return lp, reasons


def compute_learning_percentages(
    model,
    tokenizer,
    conversations: list[list[dict]],
    config: WarmupConfig,
    log: Callable[[str], None] = print,
    max_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(perplexities [N, epochs+1], LP [N, epochs], reasons); unencodable rows are NaN.
    ``max_tokens``: padded tokens per batch, in training and perplexity passes."""
    encoded = [encode_conversation(tokenizer, m, config.max_length) for m in conversations]
    usable = [i for i, e in enumerate(encoded) if e is not None]
    trainable = [encoded[i] for i in usable]
    batching = Batching(config.batch_size, max_tokens, log)
    history = [perplexities(model, trainable, tokenizer.pad_token_id, batching)]

    def record(epoch, peft_model, optimizer, lr_mean):
        history.append(perplexities(peft_model, trainable, tokenizer.pad_token_id, batching))

    train_lora(
        model,
        trainable,
        config,
        tokenizer.pad_token_id,
        log,
        on_epoch=record,
        label="small-model",
        max_tokens=max_tokens,
    )
    p = np.full((len(conversations), config.epochs + 1), math.nan)
    p[usable] = np.stack(history, axis=1)
    lp, reasons = learning_percentage(p)
    missing = set(range(len(conversations))) - set(usable)
    reasons = [
        f"no response tokens within max_length={config.max_length}" if i in missing else r
        for i, r in enumerate(reasons)
    ]
    return p, lp, reasons
