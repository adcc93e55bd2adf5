"""Loss-based scores (docs/methods/cherry_ifd.md, superfiltering.md) and uncertainty
(uncertainty.md) from teacher-forced forwards.

Two templates decide how ``L(A|Q)`` and ``L(A)`` are formed (``template``):

- ``chat`` (default): for every assistant turn, ``L(A|Q)`` = mean loss of the turn's content
  tokens given the context in the model's chat template, ``L(A)`` = mean loss of the same
  tokens with no context (only a BOS, so the first token is predicted in both), both cut to
  the same response prefix when the context makes the conditioned input exceed
  ``max_length``. Right when the selected data fine-tunes this model family with its chat
  template (dsel's own fine-tuning renders conversations that way): the scores measure the
  text the model will be trained on.
- ``alpaca``: Cherry_LLM's reference scoring (``data_analysis.py --prompt alpaca``, then
  ``data_by_IFD.py``), step for step; see :func:`alpaca_turn_inputs`. Right for parity with
  the paper's numbers and rankings, or when the target model is trained on Alpaca-style
  prompts. Its ``L(A)`` keeps the ``### Response:`` cue, so IFD <= 1 filters as in the paper;
  with ``chat`` (BOS-only ``L(A)``) the instruction nearly always helps and that filter keeps
  almost everything.

Multi-turn conversations: turn losses are combined as a token-weighted mean (each response
token counts once), then the ratios are taken. Undefined scores come back as NaN with a reason,
never as 0.

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

from .batching import Batching
from .generation import greedy_generate
from .sft import HEAD_TOKENS, IGNORE, Encoded, collate
from .templates import ALPACA_RESPONSE_HEADER, render_alpaca, render_chat

Template = Literal["chat", "alpaca"]
TEMPLATES: tuple[str, ...] = ("chat", "alpaca")


@dataclass(frozen=True)
class TurnInputs:
    conditioned: Encoded  # context + answer, labels on the answer tokens
    unconditioned: Encoded  # chat: BOS + the same answer tokens; alpaca: "### Response:" + answer


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


def _reference_encoding(tokenizer, prefix: str, answer: str, max_length: int) -> Encoded:
    """``prefix + answer`` as Cherry_LLM encodes it: the tokenizer's default special tokens,
    cut at ``max_length``; labels from the token count of ``prefix`` encoded on its own."""
    ids = tokenizer(prefix + answer, truncation=True, max_length=max_length)["input_ids"]
    start = min(len(tokenizer(prefix)["input_ids"]), len(ids))
    return Encoded(ids, [IGNORE] * start + ids[start:])


def alpaca_turn_inputs(tokenizer, messages: list[dict], max_length: int) -> list[TurnInputs]:
    """Cherry_LLM's ``--prompt alpaca`` inputs for each assistant turn, its instruction being the
    nearest user turn before it (earlier turns and system prompts are not part of the prompt).
    ``L(A|Q)``: Alpaca prompt + answer, cut at ``max_length``. ``L(A)``: ``"### Response:"`` +
    answer, cut at ``max_length - n_prompt + 4`` (``n_prompt``: the prompt's token count, itself
    cut at ``max_length``). A turn is dropped where the reference skips the record: the prompt
    fills ``max_length``, no answer token is left in either input, or ``n_prompt`` plus
    ``L(A)``'s answer tokens exceed ``max_length``."""
    pairs, instruction = [], None
    for message in messages:
        if message["role"] == "user":
            instruction = message["content"]
        if message["role"] != "assistant" or instruction is None or not message["content"]:
            continue
        prompt = render_alpaca(instruction)
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"])
        if n_prompt >= max_length:
            continue
        conditioned = _reference_encoding(tokenizer, prompt, message["content"], max_length)
        alone = _reference_encoding(tokenizer, ALPACA_RESPONSE_HEADER, message["content"], max_length - n_prompt + 4)
        if conditioned.n_response and alone.n_response and n_prompt + alone.n_response <= max_length:
            pairs.append(TurnInputs(conditioned, alone))
    return pairs


def greedy_answers(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128, batch_size: int | Batching = 8
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


def token_statistics(model, batch, precision: str = "auto") -> dict[str, np.ndarray]:
    """Per example over its labelled tokens: loss sum, token count, and the uncertainty sums
    (entropy, log p(top1)), mean and min margin p(top1) - p(top2). ``precision``: a
    :func:`~.loading.compute_precision` mode for the body; ``auto`` is bf16 autocast where the
    hardware has bf16 (1.5x on 500 real examples, 2 Zen 4 cores; IFD Spearman 0.9999 to strict
    fp32 - see benchmarks/representation_timing.py ``loss_precision``), else strict."""
    import torch
    import torch.nn.functional as F

    from .loading import compute_precision
    from .sft import _backbone_and_head

    body, head = _backbone_and_head(model)
    device = head.weight.device
    with torch.no_grad():
        with compute_precision(precision, device, auto="bfloat16"):
            hidden = body(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state
        targets = batch["labels"][:, 1:].to(device)
        rows, cols = torch.nonzero(targets != IGNORE, as_tuple=True)
        # the head in the weights' own precision: bf16 logits (~3 digits) dominated the loss error;
        # HEAD_TOKENS response tokens at a time, so no [tokens, vocabulary] tensor is held whole
        token_loss, top2, entropy = [], [], []
        for start in range(0, len(rows), HEAD_TOKENS):
            part = slice(start, start + HEAD_TOKENS)
            logp = F.log_softmax(head(hidden[rows[part], cols[part]].to(head.weight.dtype)).float(), dim=-1)
            token_loss.append(-logp.gather(1, targets[rows[part], cols[part]][:, None])[:, 0])
            top2.append(logp.topk(2, dim=-1).values)
            entropy.append(-(logp.exp() * logp).sum(-1))
        empty = hidden.new_zeros((0, 2), dtype=torch.float32)  # a batch with no response token
        token_loss, entropy = torch.cat(token_loss or [empty[:, 0]]), torch.cat(entropy or [empty[:, 0]])
        top2 = torch.cat(top2 or [empty])
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


def check_options(response: str, template: str) -> None:
    """Raise on an unknown response source or template, or on greedy responses with ``alpaca``."""
    if response not in ("reference", "greedy"):
        raise ValueError(f"response: {response!r} is not one of ['reference', 'greedy']")
    if template not in TEMPLATES:
        raise ValueError(f"template: {template!r} is not one of {list(TEMPLATES)}")
    if template == "alpaca" and response == "greedy":
        raise ValueError("template: greedy responses are generated and scored with the chat template only")


def scoring_inputs(pairs: list[TurnInputs]) -> Iterator[tuple[str, list[Encoded]]]:
    """The forwards scoring runs: every pair's conditioned encodings, then its unconditioned ones."""
    for kind in ("conditioned", "unconditioned"):
        yield kind, [getattr(pair, kind) for pair in pairs]


def _accumulate(sums: dict, min_margin: np.ndarray, kind: str, owners: np.ndarray, stats: dict) -> None:
    """Add one batch's token statistics to the sums of the examples owning its turns."""
    if kind == "unconditioned":
        np.add.at(sums["uncond"], owners, stats["loss_sum"])
        np.add.at(sums["uncond_count"], owners, stats["count"])
        return
    np.add.at(sums["cond"], owners, stats["loss_sum"])
    np.add.at(sums["count"], owners, stats["count"])
    np.add.at(sums["entropy"], owners, stats["entropy_sum"])
    np.add.at(sums["log_top1"], owners, stats["log_top1_sum"])
    np.add.at(sums["margin"], owners, stats["margin_sum"])
    np.minimum.at(min_margin, owners, stats["margin_min"])


def score_examples(
    model,
    tokenizer,
    items: list[tuple[str, list[dict]]],
    max_length: int = 512,
    batch_size: int | Batching = 8,
    response: Literal["reference", "greedy"] = "reference",
    max_new_tokens: int = 128,
    template: Template = "chat",
    precision: str = "auto",
) -> Iterator[tuple[str, ExampleScores]]:
    """Scores per example id, teacher-forced on the reference responses or on the model's greedy
    generation, with the chat or the Alpaca template (module docstring); examples with no
    scorable response token get a reason. ``precision``: as in :func:`token_statistics`;
    ``batch_size``: examples per forward, or a :class:`~.batching.Batching`."""
    check_options(response, template)
    batching = Batching.of(batch_size)
    answers: list[list[list[int]] | None] = [None] * len(items)
    if response == "greedy":
        answers = greedy_answers(model, tokenizer, [m for _, m in items], max_new_tokens, batching)
    turns: list[tuple[int, TurnInputs]] = []
    for index, (_, messages) in enumerate(items):
        if template == "alpaca":
            pairs = alpaca_turn_inputs(tokenizer, messages, max_length)
        else:
            pairs = turn_inputs(tokenizer, messages, max_length, answers[index])
        turns += [(index, pair) for pair in pairs]
    keys = ("cond", "uncond", "count", "uncond_count", "entropy", "log_top1", "margin")
    sums = {key: np.zeros(len(items)) for key in keys}
    min_margin = np.full(len(items), np.inf)
    for kind, encoded in scoring_inputs([pair for _, pair in turns]):

        def forward(group, encoded=encoded):
            return token_statistics(model, collate([encoded[i] for i in group], tokenizer.pad_token_id), precision)

        for group, stats in batching.run([len(e.input_ids) for e in encoded], forward):
            _accumulate(sums, min_margin, kind, np.array([turns[i][0] for i in group]), stats)
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
                    reason=f"no {response} response tokens within max_length={max_length} ({template} template)",
                ),
            )
            continue
        # chat: both cover the same tokens; alpaca: each its own reference truncation
        cond, uncond = sums["cond"][index] / count, sums["uncond"][index] / sums["uncond_count"][index]
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
