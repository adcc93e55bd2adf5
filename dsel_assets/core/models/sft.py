"""Supervised fine-tuning inputs: token ids with loss only on assistant tokens, length
bucketing, padding, and the per-example response loss every model method shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .templates import render_chat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One example as ids and labels (``IGNORE`` outside assistant tokens)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_response(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _n_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int) -> Encoded | None:
    """Ids of the templated conversation, labels on every assistant turn's tokens (its
    content and end-of-turn marker, not the role header). Right-truncated to ``max_length``;
    ``None`` when truncation leaves no response token (the caller records why)."""
    full = render_chat(tokenizer, messages)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _n_tokens(tokenizer, render_chat(tokenizer, messages[:i], generation_prompt=True))
        end = _n_tokens(tokenizer, render_chat(tokenizer, messages[: i + 1]))
        labels[start:end] = ids[start:end]
    encoded = Encoded(ids[:max_length], labels[:max_length])
    return encoded if encoded.n_response else None


def length_batches(lengths: Sequence[int], max_batch: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped by similar length (sorted, then cut) so padding wastes little; a batch
    holds at most ``max_batch`` examples and ``max_tokens`` padded tokens. Deterministic."""
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order.tolist():
        longest = lengths[current[0]] if current else lengths[index]
        too_many = max_tokens is not None and current and longest * (len(current) + 1) > max_tokens
        if len(current) == max_batch or too_many:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def collate(examples: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example; attention mask 0 and label ``IGNORE`` on padding."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(example.input_ids)
        labels[row, cols] = torch.tensor(example.labels)
        mask[row, cols] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _backbone_and_head(model):
    """(transformer body, lm_head) of a causal LM, also when wrapped by peft."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder() if hasattr(inner, "get_decoder") else inner.model, inner.get_output_embeddings()


#: Response tokens per vocabulary projection: a 49k-word vocabulary makes 200 MB of float32
#: logits per 1,024 tokens, and a batch of 8 x 512 tokens held them whole (several GB in training).
HEAD_TOKENS = 1024


def _chunk_cross_entropy(head, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def head_cross_entropy(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row of ``hidden`` [N, H] against ``targets`` [N], projected onto the
    vocabulary ``HEAD_TOKENS`` rows at a time; with gradients, a chunk's logits are recomputed in
    the backward pass instead of kept (activation checkpointing), so no [N, V] tensor is held."""
    import torch
    from torch.utils.checkpoint import checkpoint

    pieces = []
    for start in range(0, len(hidden), HEAD_TOKENS):
        chunk, wanted = hidden[start : start + HEAD_TOKENS], targets[start : start + HEAD_TOKENS]
        if torch.is_grad_enabled() and chunk.requires_grad:
            pieces.append(checkpoint(_chunk_cross_entropy, head, chunk, wanted, use_reentrant=False))
        else:
            pieces.append(_chunk_cross_entropy(head, chunk, wanted))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over each example's response tokens, shape [B] (float32).

    The vocabulary projection runs only on positions that predict a response token, which
    saves most of the lm_head cost and memory (49k-word vocabulary, short responses), and in
    chunks (:func:`head_cross_entropy`)."""
    import torch

    body, head = _backbone_and_head(model)
    device = head.weight.device
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    hidden = body(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).last_hidden_state
    targets = labels[:, 1:]
    rows, cols = torch.nonzero(targets != IGNORE, as_tuple=True)
    token_loss = head_cross_entropy(head, hidden[rows, cols], targets[rows, cols])
    totals = torch.zeros(len(input_ids), device=device).index_add(0, rows, token_loss)
    counts = torch.zeros(len(input_ids), device=device).index_add(0, rows, torch.ones_like(token_loss))
    return totals / counts.clamp(min=1)
