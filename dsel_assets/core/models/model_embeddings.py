"""Model embeddings (RDS+: docs/methods/round_robin.md) from the last hidden layer of a causal LM."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .batching import Batching
from .sft import IGNORE, Encoded, collate
from .templates import render_chat

Pooling = Literal["mean", "position_weighted", "last_token"]
POOLINGS: tuple[str, ...] = ("mean", "position_weighted", "last_token")


def pool_hidden(hidden, mask, pooling: Pooling):
    """[B, T, H] -> [B, H]: masked mean (Cherry, DiverseEvol), position-weighted mean with
    weights 1..T over the real tokens (RDS+), or the last real token (D&C, DEITA)."""
    import torch

    mask = mask.to(hidden.dtype)
    if pooling == "mean":
        weights = mask
    elif pooling == "position_weighted":
        weights = torch.cumsum(mask, dim=1) * mask
    elif pooling == "last_token":
        last = (torch.arange(mask.shape[1], device=mask.device)[None] * mask).argmax(dim=1)
        weights = torch.zeros_like(mask).scatter_(1, last[:, None], 1.0)
    else:
        raise ValueError(f"pooling: {pooling!r} is not one of {list(POOLINGS)}")
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.einsum("bt,bth->bh", weights, hidden)


def model_embeddings(
    model,
    tokenizer,
    conversations: list[list[dict]],
    pooling: Pooling = "mean",
    max_length: int = 512,
    batch_size: int | Batching = 8,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per conversation (in input order);
    ``batch_size``: conversations per forward, or a :class:`~.batching.Batching`."""
    import torch

    from .sft import _backbone_and_head

    body, head = _backbone_and_head(model)
    device = head.weight.device
    encoded = []
    for messages in conversations:
        ids = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"][:max_length]
        encoded.append(Encoded(ids, [IGNORE] * len(ids)))  # embeddings need no labels
    out = np.zeros((len(encoded), body.config.hidden_size), dtype=np.float32)

    def embed(group):
        batch = collate([encoded[i] for i in group], tokenizer.pad_token_id)
        with torch.no_grad():
            hidden = body(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state
            pooled = pool_hidden(hidden.float(), batch["attention_mask"].to(device), pooling)
            return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()

    for group, rows in Batching.of(batch_size).run([len(e.input_ids) for e in encoded], embed):
        out[group] = rows
    return out
