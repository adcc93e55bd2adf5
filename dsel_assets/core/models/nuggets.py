"""Nuggets golden score (METHODS.md R5, pldlgb/nuggets).

``lp0(a)`` = sum of log-probs of anchor ``a``'s answer tokens zero-shot; ``lp1(a|c)`` = the
same with candidate ``c`` (its whole conversation) as a one-shot demonstration before the
anchor; ``GS(c) = mean_a 1[lp1(a|c) > lp0(a)]``. Both inputs are rendered by the same chat
template (one system/BOS header at the start of each) - the reference treats them
differently, a bug. Cost is N x |A| forwards; here each candidate's demonstration is run
once, its KV cache is reused for every anchor, and anchors go through in batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .sft import encode_conversation
from .templates import render_chat


@dataclass(frozen=True)
class Anchor:
    messages: list[dict]  # ends with the assistant answer that is scored
    zero_shot_ids: list[int]
    n_answer: int  # the answer tokens are the last n_answer ids of every rendering


def prepare_anchors(tokenizer, anchors: list[list[dict]], max_length: int) -> list[Anchor]:
    prepared = []
    for messages in anchors:
        enc = encode_conversation(tokenizer, messages, max_length)
        if enc is None or enc.labels[-1] == -100:
            raise ValueError("anchors: every anchor needs an answer that fits max_length")
        n_answer = len(enc.labels) - next(i for i, x in enumerate(enc.labels) if x != -100)
        prepared.append(Anchor(messages, enc.input_ids, n_answer))
    return prepared


def _answer_logprob(logits, ids, n_answer: int) -> float:
    """Sum of log p(answer token) given the tokens before it (``logits`` predict ``ids``)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.as_tensor(ids[-n_answer:], device=logits.device)
    return float(logp[-n_answer - 1 : -1].gather(1, targets[:, None]).sum())


def zero_shot(model, anchors: list[Anchor]) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return np.array(
            [
                _answer_logprob(
                    model(torch.tensor([a.zero_shot_ids], device=device)).logits[0], a.zero_shot_ids, a.n_answer
                )
                for a in anchors
            ]
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
    on_candidate: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """lp1 [N, |A|]: each demonstration runs once; its KV cache is copied across a batch of
    anchor suffixes (right-padded; positions continue after the prefix). NaN rows + reason
    for candidates that do not fit ``max_length``."""
    import torch

    device = next(model.parameters()).device
    lp1 = np.full((len(candidates), len(anchors)), math.nan)
    reasons = [""] * len(candidates)
    with torch.no_grad():
        for ci, demo in enumerate(candidates):
            pairs = [_suffix_ids(tokenizer, demo, a) for a in anchors]
            prefix = pairs[0][0]
            if len(prefix) + max(len(s) for _, s in pairs) > max_length:
                reasons[ci] = f"demonstration + anchor exceed max_length={max_length}"
                continue
            cache = model(torch.tensor([prefix], device=device), use_cache=True).past_key_values
            for start in range(0, len(anchors), batch_size):
                group = range(start, min(start + batch_size, len(anchors)))
                suffixes = [pairs[i][1] for i in group]
                width = max(map(len, suffixes))
                ids = torch.full((len(suffixes), width), tokenizer.pad_token_id, device=device)
                mask = torch.zeros((len(suffixes), len(prefix) + width), dtype=torch.long, device=device)
                mask[:, : len(prefix)] = 1
                for row, suffix in enumerate(suffixes):
                    ids[row, : len(suffix)] = torch.tensor(suffix, device=device)
                    mask[row, len(prefix) : len(prefix) + len(suffix)] = 1
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(suffixes))
                logits = model(input_ids=ids, attention_mask=mask, past_key_values=batch_cache).logits
                for row, i in enumerate(group):
                    n = len(suffixes[row])
                    # the first suffix token is predicted by the prefix; answers never start there
                    lp1[ci, i] = _answer_logprob(logits[row, :n], suffixes[row], anchors[i].n_answer)
            if on_candidate is not None:
                on_candidate(ci + 1, len(candidates))
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
