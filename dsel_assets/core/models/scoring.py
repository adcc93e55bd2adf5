"""Loss-based scores (METHODS.md R3) and uncertainty (R4) from teacher-forced forwards.

For every assistant turn: ``L(A|Q)`` = mean loss of the turn's content tokens given the
templated context, ``L(A)`` = mean loss of the same tokens with no context (only a BOS, so
the first token is predicted in both). Both are cut to the same response prefix when the
context makes the conditioned input exceed ``max_length``. Multi-turn conversations: turn
losses are combined as a token-weighted mean (each response token counts once), then the
ratios are taken. Undefined scores come back as NaN with a reason, never as 0.

R4 allows the model's own greedy generation instead of the reference: ``response="greedy"``
generates each assistant turn from its reference context and scores those token ids (not a
re-tokenization of their text), so every scored token is the model's top-1 choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .generation import greedy_generate
from .sft import IGNORE, Encoded, collate, length_batches
from .templates import render_chat


@dataclass(frozen=True)
class TurnInputs:
    conditioned: Encoded  # context + answer, labels on the answer tokens
    unconditioned: Encoded  # BOS + the same answer tokens


def _contexts(tokenizer, messages: list[dict]) -> list[list[int]]:
    """Ids of the templated context before each assistant turn (up to its role header)."""
    return [
        tokenizer(render_chat(tokenizer, messages[:i], generation_prompt=True), add_special_tokens=False)["input_ids"]
        for i, message in enumerate(messages)
        if message["role"] == "assistant"
    ]


def turn_inputs(
    tokenizer, messages: list[dict], max_length: int, answers: list[list[int]] | None = None
) -> list[TurnInputs]:
    """One pair per assistant turn; turns left with no answer token by truncation are dropped.
    ``answers`` replaces the reference turns' token ids (a greedy generation per turn)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pairs = []
    turns = [m for m in messages if m["role"] == "assistant"]
    if answers is None:
        answers = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in turns]
    for context, answer in zip(_contexts(tokenizer, messages), answers, strict=True):
        keep = min(len(answer), max_length - len(context), max_length - 1)
        if keep <= 0:
            continue
        ids = context + answer[:keep]
        labels = [IGNORE] * len(context) + answer[:keep]
        pairs.append(TurnInputs(Encoded(ids, labels), Encoded([bos, *answer[:keep]], [IGNORE, *answer[:keep]])))
    return pairs


def greedy_answers(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 8
) -> list[list[list[int]]]:
    """Per conversation, per assistant turn: the model's greedy reply to the reference context
    before that turn, as token ids up to (not including) the end-of-sequence token."""
    contexts = [c for messages in conversations for c in _contexts(tokenizer, messages)]
    replies = greedy_generate(model, tokenizer, contexts, max_new_tokens, batch_size)
    answers, start = [], 0
    for messages in conversations:
        n = sum(m["role"] == "assistant" for m in messages)
        answers.append(replies[start : start + n])
        start += n
    return answers


def token_statistics(model, batch) -> dict[str, np.ndarray]:
    """Per example over its labelled tokens: loss sum, token count, and the uncertainty sums
    (entropy, log p(top1)), mean and min margin p(top1) - p(top2)."""
    import torch
    import torch.nn.functional as F

    from .sft import _backbone_and_head

    body, head = _backbone_and_head(model)
    device = head.weight.device
    with torch.no_grad():
        hidden = body(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).last_hidden_state
        targets = batch["labels"][:, 1:].to(device)
        rows, cols = torch.nonzero(targets != IGNORE, as_tuple=True)
        logp = F.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
        token_loss = -logp.gather(1, targets[rows, cols][:, None])[:, 0]
        top2 = logp.topk(2, dim=-1).values
        entropy = -(logp.exp() * logp).sum(-1)
        margin = top2[:, 0].exp() - top2[:, 1].exp()
    n = len(batch["input_ids"])

    def total(values):
        return torch.zeros(n, device=device).index_add(0, rows, values).cpu().numpy()

    min_margin = torch.full((n,), float("inf"), device=device).scatter_reduce(0, rows, margin, reduce="amin")
    return {
        "loss_sum": total(token_loss),
        "count": total(torch.ones_like(token_loss)),
        "entropy_sum": total(entropy),
        "log_top1_sum": total(top2[:, 0]),
        "margin_sum": total(margin),
        "margin_min": min_margin.cpu().numpy(),
    }


@dataclass
class ExampleScores:
    """Scores of one example; NaN where undefined (``reason`` says why)."""

    loss_conditioned: float
    loss_unconditioned: float
    ppl_conditioned: float
    ifd_loss_ratio: float  # Cherry: L(A|Q) / L(A)
    ifd_ppl_ratio: float  # Superfiltering: exp(L(A|Q) - L(A))
    mean_entropy: float
    least_confidence: float  # -sum log p(top1): monotone in -prod p(top1), no underflow
    mean_margin: float
    min_margin: float
    response_tokens: int
    reason: str = ""


def ifd_scores(loss_conditioned: float, loss_unconditioned: float) -> tuple[float, float, str]:
    """(Cherry IFD, Superfiltering IFD, reason) with the zero / NaN denominators guarded."""
    if not (math.isfinite(loss_conditioned) and math.isfinite(loss_unconditioned)):
        return math.nan, math.nan, "non-finite loss"
    superfiltering = math.exp(loss_conditioned - loss_unconditioned)
    if loss_unconditioned <= 0:
        return math.nan, superfiltering, "L(A) <= 0: loss-ratio IFD undefined"
    return loss_conditioned / loss_unconditioned, superfiltering, ""


def score_examples(
    model,
    tokenizer,
    items: list[tuple[str, list[dict]]],
    max_length: int = 512,
    batch_size: int = 8,
    response: Literal["reference", "greedy"] = "reference",
    max_new_tokens: int = 128,
) -> Iterator[tuple[str, ExampleScores]]:
    """Scores per example id, teacher-forced on the reference responses or on the model's greedy
    generation; examples with no scorable response token get a reason."""
    if response not in ("reference", "greedy"):
        raise ValueError(f"response: {response!r} is not one of ['reference', 'greedy']")
    answers: list[list[list[int]] | None] = [None] * len(items)
    if response == "greedy":
        answers = greedy_answers(model, tokenizer, [m for _, m in items], max_new_tokens, batch_size)
    turns: list[tuple[int, TurnInputs]] = []
    for index, (_, messages) in enumerate(items):
        turns += [(index, pair) for pair in turn_inputs(tokenizer, messages, max_length, answers[index])]
    sums = {key: np.zeros(len(items)) for key in ("cond", "uncond", "count", "entropy", "log_top1", "margin")}
    min_margin = np.full(len(items), np.inf)
    for kind in ("conditioned", "unconditioned"):
        encoded = [getattr(pair, kind) for _, pair in turns]
        for group in length_batches([len(e.input_ids) for e in encoded], batch_size):
            stats = token_statistics(model, collate([encoded[i] for i in group], tokenizer.pad_token_id))
            owners = np.array([turns[i][0] for i in group])
            if kind == "unconditioned":
                np.add.at(sums["uncond"], owners, stats["loss_sum"])
                continue
            np.add.at(sums["cond"], owners, stats["loss_sum"])
            np.add.at(sums["count"], owners, stats["count"])
            np.add.at(sums["entropy"], owners, stats["entropy_sum"])
            np.add.at(sums["log_top1"], owners, stats["log_top1_sum"])
            np.add.at(sums["margin"], owners, stats["margin_sum"])
            np.minimum.at(min_margin, owners, stats["margin_min"])
    for index, (item_id, _) in enumerate(items):
        count = int(sums["count"][index])
        if count == 0:
            nan = math.nan
            yield (
                item_id,
                ExampleScores(
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    0,
                    reason=f"no {response} response tokens within max_length={max_length}",
                ),
            )
            continue
        cond, uncond = sums["cond"][index] / count, sums["uncond"][index] / count
        cherry, superfiltering, reason = ifd_scores(cond, uncond)
        yield (
            item_id,
            ExampleScores(
                cond,
                uncond,
                math.exp(cond),
                cherry,
                superfiltering,
                sums["entropy"][index] / count,
                -sums["log_top1"][index],
                sums["margin"][index] / count,
                float(min_margin[index]),
                count,
                reason,
            ),
        )
