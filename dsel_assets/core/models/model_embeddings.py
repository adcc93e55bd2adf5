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


def embedding_ids(tokenizer, messages: list[dict], max_length: int, bos: bool) -> list[int]:
    """The chat-rendered tokens of one conversation, starting with the BOS token once when
    ``bos`` (not added where the template already begins with it, nor by a tokenizer that has
    none), cut to the first ``max_length``."""
    ids = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
    first = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    return (ids if ids[: len(first)] == first else first + ids)[:max_length]


def model_embeddings(
    model,
    tokenizer,
    conversations: list[list[dict]],
    pooling: Pooling = "mean",
    max_length: int = 512,
    batch_size: int | Batching = 8,
    bos: bool = False,
    normalise: bool = True,
) -> np.ndarray:
    """L2-normalised float32 embeddings (as pooled, with ``normalise=False``), one row per
    conversation (in input order), of its first ``max_length`` tokens (at most the model's
    context); ``bos``: see :func:`embedding_ids` (RDS+'s reference tokenizes with BOS);
    ``batch_size``: conversations per forward, or a :class:`~.batching.Batching`."""
    import torch

    from .sft import _backbone_and_head

    body, head = _backbone_and_head(model)
    device = head.weight.device
    max_length = min(max_length, getattr(body.config, "max_position_embeddings", None) or max_length)
    encoded = []
    for messages in conversations:
        ids = embedding_ids(tokenizer, messages, max_length, bos)
        encoded.append(Encoded(ids, [IGNORE] * len(ids)))  # embeddings need no labels
    out = np.zeros((len(encoded), body.config.hidden_size), dtype=np.float32)

    def embed(group):
        batch = collate([encoded[i] for i in group], tokenizer.pad_token_id)
        with torch.no_grad():
            hidden = body(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state
            pooled = pool_hidden(hidden.float(), batch["attention_mask"].to(device), pooling)
            return (torch.nn.functional.normalize(pooled, dim=1) if normalise else pooled).cpu().numpy()

    for group, rows in Batching.of(batch_size).run([len(e.input_ids) for e in encoded], embed):
        out[group] = rows
    return out
