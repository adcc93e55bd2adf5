"""Nuggets golden score (docs/methods/nuggets.md, pldlgb/nuggets).

``lp0(a)`` = sum of log-probs of anchor ``a``'s answer tokens zero-shot; ``lp1(a|c)`` = the
same with candidate ``c`` (its whole conversation) as a one-shot demonstration before the
anchor; ``GS(c) = mean_a 1[lp1(a|c) > lp0(a)]``. Both inputs are rendered by the same chat
template (one system/BOS header at the start of each) - the reference treats them
differently, a bug. Cost is N x |A| forwards; here each candidate's demonstration is run
once, its KV cache is reused for every anchor, and anchors go through in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .loading import cache_keyword, returned_cache
from .sft import encode_conversation
from .templates import render_chat


@dataclass(frozen=True)
class Anchor:
    messages: list[dict]  # ends with the assistant answer that is scored
    zero_shot_ids: list[int]
    n_answer: int  # the answer tokens are the last n_answer ids of every rendering


def prepare_anchors(tokenizer, anchors: list[list[dict]], max_length: int) -> list[Anchor]:
    """The anchors that leave a demonstration room: an anchor whose rendering takes more than
    half of ``max_length`` tokens is left out (kept, every demonstration would fail the length
    check and every score would be undefined); none left is an error. An anchor is scored on its
    final answer, the tokens of its last assistant turn, as the reference scores its response."""
    prepared = []
    for messages in anchors:
        enc = encode_conversation(tokenizer, messages, max_length)
        if enc is None or enc.labels[-1] == -100 or len(enc.input_ids) > max_length // 2:
            continue  # truncated inside (or before) its answer, or too long to pair with a demonstration
        n_answer = next(i for i, x in enumerate(reversed(enc.labels)) if x == -100)  # the trailing answer
        prepared.append(Anchor(messages, enc.input_ids, n_answer))
    if not prepared:
        raise ValueError(f"anchors: none of {len(anchors)} fits in half of max_length={max_length} tokens")
    return prepared


def _answer_logprob(logits, ids, n_answer: int) -> float:
    """Sum of log p(answer token) given the tokens before it (``logits`` predict ``ids``)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.as_tensor(ids[-n_answer:], device=logits.device)
    return float(logp[-n_answer - 1 : -1].gather(1, targets[:, None]).double().sum())


def _batched_answer_logprobs(
    model,
    suffixes: list[list[int]],
    n_answers: list[int],
    batch_size: int,
    prefix_cache=None,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Answer log-prob sums of ``suffixes`` continuing a cached prefix (or none), in length-sorted
    batches. Suffixes are right-padded with no attention mask: under causal attention a real
    token never sees the padding after it, and positions continue after the prefix for every
    row. Only the positions that predict answer tokens go through the vocabulary projection."""
    import torch
    from transformers import DynamicCache

    from .sft import _backbone_and_head, length_batches

    body, head = _backbone_and_head(model)
    device = head.weight.device
    out = np.empty(len(suffixes))
    for group in length_batches([len(s) for s in suffixes], batch_size, max_tokens):
        width = max(len(suffixes[i]) for i in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for row, i in enumerate(group):
            suffix, n = suffixes[i], n_answers[i]
            if not 0 < n < len(suffix):
                raise ValueError("nuggets: an answer must follow at least one token of its anchor")
            ids[row, : len(suffix)] = torch.tensor(suffix)
            rows += [row] * n
            cols += range(len(suffix) - n - 1, len(suffix) - 1)
            targets += suffix[-n:]
        cache = None
        if prefix_cache is not None:
            cache = DynamicCache(
                [(k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1)) for k, v in prefix_cache],
                config=model.config,
            )
        rows_t = torch.tensor(rows, device=device)
        with torch.no_grad():
            hidden = body(input_ids=ids.to(device), **{cache_keyword(body): cache}, use_cache=cache is not None)
            logits = head(hidden.last_hidden_state[rows_t, torch.tensor(cols, device=device)])
        logp = torch.log_softmax(logits.float(), dim=-1)
        token = logp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].double()
        out[group] = torch.zeros(len(group), dtype=torch.float64, device=device).index_add(0, rows_t, token).cpu()
    return out


def zero_shot(model, anchors: list[Anchor], batch_size: int = 16) -> np.ndarray:
    """lp0 per anchor: its answer log-prob sum with no demonstration."""
    return _batched_answer_logprobs(
        model, [a.zero_shot_ids for a in anchors], [a.n_answer for a in anchors], batch_size
    )


def _suffix_ids(tokenizer, demo: list[dict], anchor: Anchor) -> tuple[list[int], list[int]]:
    prefix_text = render_chat(tokenizer, demo)
    full_text = render_chat(tokenizer, demo + anchor.messages)
    if not full_text.startswith(prefix_text):
        raise ValueError("template: the rendering of a conversation is not a prefix of its extension")
    prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(full_text[len(prefix_text) :], add_special_tokens=False)["input_ids"]
    return prefix, suffix


def one_shot_cached(
    model,
    tokenizer,
    candidates: list[list[dict]],
    anchors: list[Anchor],
    batch_size: int = 16,
    max_length: int = 2048,
    max_tokens: int | None = 1024,
) -> tuple[np.ndarray, list[str]]:
    """lp1 [N, |A|]: each demonstration runs once through the transformer body; its KV cache is
    shared (expanded, not copied per anchor) by batches of length-sorted anchor suffixes of at
    most ``batch_size`` rows and ``max_tokens`` padded tokens (on 2 CPU cores 1024 measured
    faster than one anchor per forward or unbounded batches). NaN rows + reason for candidates
    that do not fit ``max_length``."""
    import torch

    from .sft import _backbone_and_head

    body, head = _backbone_and_head(model)
    device = head.weight.device
    lp1 = np.full((len(candidates), len(anchors)), math.nan)
    reasons = [""] * len(candidates)
    with torch.no_grad():
        for ci, demo in enumerate(candidates):
            pairs = [_suffix_ids(tokenizer, demo, a) for a in anchors]
            prefix = pairs[0][0]
            if len(prefix) + max(len(s) for _, s in pairs) > max_length:
                reasons[ci] = f"demonstration + anchor exceed max_length={max_length}"
            else:
                cache = returned_cache(body(input_ids=torch.tensor([prefix], device=device), use_cache=True))
                lp1[ci] = _batched_answer_logprobs(
                    model,
                    [s for _, s in pairs],
                    [a.n_answer for a in anchors],
                    batch_size,
                    [(layer.keys, layer.values) for layer in cache.layers],
                    max_tokens,
                )
    return lp1, reasons


def one_shot_naive(model, tokenizer, candidates: list[list[dict]], anchors: list[Anchor]) -> np.ndarray:
    """The reference loop: one full forward per (candidate, anchor) text concatenation."""
    import torch

    device = next(model.parameters()).device
    lp1 = np.zeros((len(candidates), len(anchors)))
    with torch.no_grad():
        for ci, demo in enumerate(candidates):
            for i, anchor in enumerate(anchors):
                ids = tokenizer(render_chat(tokenizer, demo + anchor.messages), add_special_tokens=False)["input_ids"]
                lp1[ci, i] = _answer_logprob(model(torch.tensor([ids], device=device)).logits[0], ids, anchor.n_answer)
    return lp1


def golden_scores(lp1: np.ndarray, lp0: np.ndarray) -> np.ndarray:
    """GS = share of anchors whose one-shot log-prob beats zero-shot (strictly); NaN rows stay NaN."""
    wins = (lp1 > lp0[None, :]).mean(axis=1)
    return np.where(np.isnan(lp1).any(axis=1), np.nan, wins)
