"""Evaluation of a (fine-tuned) model on held-out eval sets, per capability.

Every example gets its mean response-token loss on the reference. Where the answer is
checkable a greedy generation is graded: exact match of the final answer (the synthetic
capabilities' ``The answer is X``; GSM8K's number after ``####``), ROUGE-L (``rouge-score``,
stemmed F-measure) for summaries. Per task the primary score is the mean of that metric;
balance across tasks is its min / mean / max and the worst task."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .data.synthetic import extract_answer
from .models.batching import Batching
from .models.generation import greedy_generate
from .models.loading import compute_precision
from .models.sft import collate, encode_conversation, per_example_loss
from .models.templates import render_chat
from .rouge import rouge_l

EXACT_MATCH = "exact_match"
GSM8K_MATCH = "gsm8k_exact_match"
ROUGE_L = "rouge_l"
SUMMARY_TASKS = frozenset({"summarization", "summary", "dialogsum"})
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class EvalConfig:
    max_per_task: int = field(default=50, metadata={"help": "eval examples per task (seeded sample; 0 = all)"})
    max_new_tokens: int = field(default=128, metadata={"help": "greedy generation cap"})
    max_length: int = field(default=512, metadata={"help": "tokens of prompt + reference for the loss"})
    batch_size: int = field(default=16, metadata={"help": "examples per forward / generate call"})
    max_batch_tokens: int = field(
        default=0,
        metadata={
            "help": "cap on padded tokens per loss forward (0 = none); 1,024 was 1.17x faster on GSM8K rows but "
            "slower on the real-data study's mixed eval set (~200 s vs 154-173 s per model), so it is off"
        },
    )
    generate: bool = field(default=True, metadata={"help": "generate and grade checkable answers"})
    seed: int = field(default=0, metadata={"help": "eval sample seed"})
    lm_eval_tasks: tuple[str, ...] = field(
        default=(), metadata={"help": "lm-evaluation-harness tasks scored besides the eval sets (core.harness)"}
    )
    lm_eval_limit: int = field(default=0, metadata={"help": "documents per lm-eval task (0 = all)"})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens: must be >= 0 (0 = no cap), got {self.max_batch_tokens}")
        if self.max_per_task < 0:
            raise ValueError(f"max_per_task: must be >= 0, got {self.max_per_task}")
        if self.lm_eval_limit < 0:
            raise ValueError(f"lm_eval_limit: must be >= 0 (0 = all), got {self.lm_eval_limit}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalExample:
    pool_id: str
    task: str
    messages: list[dict]
    meta: dict


@dataclass
class EvalRow:
    pool_id: str
    task: str
    metric: str | None
    score: float | None
    loss: float | None
    prediction: str | None
    reason: str = ""


def gsm8k_number(text: str) -> str | None:
    """GSM8K's final answer: the number after the last ``####``, else the last number in the
    text; commas and a trailing ``.0`` removed so ``1,000`` and ``1000.0`` match ``1000``."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    value = numbers[0] if "####" in text else numbers[-1]
    value = value.replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def metric_of(example: EvalExample) -> tuple[str | None, str | None]:
    """(metric, reference answer) of an eval example; (None, None) when only the loss applies."""
    reference = example.messages[-1]["content"] if example.messages[-1]["role"] == "assistant" else ""
    if example.meta.get("answer") is not None:  # synthetic capability: checkable final answer
        return EXACT_MATCH, str(example.meta["answer"])
    if "####" in reference:
        return GSM8K_MATCH, gsm8k_number(reference)
    if example.task in SUMMARY_TASKS:
        return ROUGE_L, reference
    return None, None


def exact_match(metric: str, prediction: str, answer: str) -> bool:
    if metric == GSM8K_MATCH:
        return gsm8k_number(prediction) == answer
    got = extract_answer(prediction)
    return got is not None and " ".join(got.split()) == " ".join(answer.split())


def eval_sample(examples: Sequence[EvalExample], max_per_task: int, seed: int) -> list[EvalExample]:
    """Up to ``max_per_task`` examples per task: a seeded permutation of the id-sorted task
    rows, so every model of a comparison sees the same examples."""
    by_task: dict[str, list[EvalExample]] = {}
    for example in sorted(examples, key=lambda e: e.pool_id):
        by_task.setdefault(example.task, []).append(example)
    chosen = []
    for task in sorted(by_task):
        rows = by_task[task]
        if max_per_task and len(rows) > max_per_task:
            order = np.random.default_rng(seed).permutation(len(rows))[:max_per_task]
            rows = [rows[i] for i in sorted(order)]
        chosen.extend(rows)
    return chosen


def greedy_replies(
    model, tokenizer, conversations: Sequence[list[dict]], max_new_tokens: int, batch_size: int | Batching
) -> list[str]:
    """Greedy replies to the conversations' prompts (the turns before the last reply)."""
    prompts = [render_chat(tokenizer, _prompt_turns(m), generation_prompt=True) for m in conversations]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    replies = greedy_generate(model, tokenizer, ids, max_new_tokens, batch_size)
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]


def _prompt_turns(messages: list[dict]) -> list[dict]:
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def response_losses(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_length: int,
    batch_size: int | Batching,
) -> list[float | None]:
    """Mean response-token loss on each reference conversation; None when truncation to
    ``max_length`` leaves no response token. ``batch_size``: conversations per forward, or a
    :class:`~.models.batching.Batching`."""
    import torch

    encoded = [encode_conversation(tokenizer, m, max_length) for m in conversations]
    kept = [i for i, e in enumerate(encoded) if e is not None]
    losses: list[float | None] = [None] * len(encoded)
    device = next(model.parameters()).device

    def forward(group):
        batch = collate([encoded[kept[i]] for i in group], tokenizer.pad_token_id)
        with torch.no_grad(), compute_precision("auto", device):
            return per_example_loss(model, batch).tolist()

    for group, values in Batching.of(batch_size).run([len(encoded[i].input_ids) for i in kept], forward):
        for i, value in zip(group, values, strict=True):
            losses[kept[i]] = value
    return losses


def evaluate(
    model,
    tokenizer,
    examples: Sequence[EvalExample],
    config: EvalConfig,
    log: Callable[[str], None] = print,
) -> list[EvalRow]:
    """One row per example: its loss, and its metric and score where the answer is checkable.
    A batch that runs out of memory is halved and retried, and ``log`` says so."""
    batching = Batching(config.batch_size, config.max_batch_tokens or None, log)
    losses = response_losses(model, tokenizer, [e.messages for e in examples], config.max_length, batching)
    metrics = [metric_of(e) for e in examples]
    gradable = [i for i, (metric, answer) in enumerate(metrics) if metric and answer is not None]
    predictions: dict[int, str] = {}
    if config.generate and gradable:
        log(f"eval: generating {len(gradable)} answers (max {config.max_new_tokens} new tokens)")
        replies = greedy_replies(
            model, tokenizer, [examples[i].messages for i in gradable], config.max_new_tokens, batching
        )
        predictions = dict(zip(gradable, replies, strict=True))
    rouge_rows = [i for i in predictions if metrics[i][0] == ROUGE_L]
    rouge_scores = rouge_l([predictions[i] for i in rouge_rows], [metrics[i][1] for i in rouge_rows])
    rouge = dict(zip(rouge_rows, rouge_scores, strict=True))
    rows = []
    for i, example in enumerate(examples):
        metric, answer = metrics[i]
        score, reason = None, ""
        if i in rouge:
            score = rouge[i]
        elif i in predictions:
            score = float(exact_match(metric, predictions[i], answer))
        elif metric and answer is None:
            reason = "reference has no extractable answer"
        if losses[i] is None:
            reason = reason or "truncation left no response token"
        rows.append(EvalRow(example.pool_id, example.task, metric, score, losses[i], predictions.get(i), reason))
    return rows


def summarize(rows: Sequence[EvalRow]) -> list[dict]:
    """Per task: n, metric, mean score (None where no metric applies), mean loss."""
    out = []
    for task in sorted({r.task for r in rows}):
        group = [r for r in rows if r.task == task]
        scored = [r.score for r in group if r.score is not None]
        losses = [r.loss for r in group if r.loss is not None]
        metrics = sorted({r.metric for r in group if r.metric})
        out.append(
            {
                "task": task,
                "n": len(group),
                "metric": "/".join(metrics) or "loss",
                "score": float(np.mean(scored)) if scored else None,
                "loss": float(np.mean(losses)) if losses else None,
            }
        )
    return out


def balance(per_task: Sequence[dict]) -> dict:
    """min / mean / max of the per-task scores and the worst task (tasks with a score only)."""
    scored = [(t["score"], t["task"]) for t in per_task if t["score"] is not None]
    if not scored:
        return {"min": None, "mean": None, "max": None, "worst": None}
    values = [s for s, _ in scored]
    return {"min": min(values), "mean": float(np.mean(values)), "max": max(values), "worst": min(scored)[1]}
