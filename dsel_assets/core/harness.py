"""Evaluation with EleutherAI's lm-evaluation-harness (the optional ``lm-eval`` extra): a model
in memory (the base, or the base with a fine-tuned adapter) scored on named harness tasks,
including tasks defined by YAML files in a local folder that read local JSON (offline), and
every per-sample result turned into an eval row, so the comparison's statistics apply to the
harness's measures as to dsel's own."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .evaluation import EvalRow

#: Prefix of a harness sample's eval-row id: ``lm_eval:<task>:<doc_id>``.
ROW_PREFIX = "lm_eval"


def _require_harness():
    try:
        import lm_eval
    except ImportError as exc:  # an optional extra
        raise ValueError("lm_eval_tasks: needs lm-evaluation-harness: pip install 'dsel[lm-eval]'") from exc
    return lm_eval


@functools.lru_cache(maxsize=4)
def _task_index(folder: str | None, installed: bool):
    """The harness's task index of ``folder``'s YAMLs, with the installed tasks or without them
    (indexing the ~15k installed task files takes ~8 s; a folder of local tasks alone, ~0 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=folder, include_defaults=installed)


def task_index(tasks: Sequence[str], include_path: Path | None):
    """The smallest task index that knows ``tasks``: the local folder's, else with the installed tasks."""
    _require_harness()
    folder = str(include_path) if include_path is not None and include_path.is_dir() else None
    if folder is not None:
        local = _task_index(folder, False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return _task_index(folder, True)


def check_tasks(tasks: Sequence[str], include_path: Path | None) -> None:
    """Refuse ``tasks`` the harness does not know (neither installed nor YAMLs in ``include_path``),
    or the harness missing, before any model loads."""
    unknown = sorted(set(tasks) - set(task_index(tasks, include_path).all_tasks))
    if unknown:
        where = f" or in {include_path}" if include_path is not None else ""
        raise ValueError(
            f"lm_eval_tasks: {unknown} are not lm-eval tasks (none of that name is installed{where}); "
            "a local task is a YAML file in that folder (see README: lm-evaluation-harness)"
        )


def _value(value) -> float | None:
    """A per-sample metric as a float (None for what is not a finite number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def harness_rows(
    model,
    tokenizer,
    tasks: Sequence[str],
    include_path: Path | None = None,
    limit: int = 0,
    batch_size: int = 8,
    seed: int = 0,
) -> list[EvalRow]:
    """One eval row per (harness task, document, metric): the sample's metric value as the score
    (exact match, accuracy, ...), what the model generated as the prediction where it generated,
    no loss. ``limit``: documents per task (0 = all); ``include_path``: a folder of task YAMLs.
    Datasets are read offline (``HF_DATASETS_OFFLINE``): a task must name local files or a
    dataset already in the cache."""
    lm_eval = _require_harness()
    from lm_eval.models.huggingface import HFLM

    check_tasks(tasks, include_path)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the harness takes a transformers model; a peft model's base still runs its adapter layers
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    harness_model = HFLM(pretrained=inner, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=harness_model,
        tasks=list(tasks),
        task_manager=task_index(tasks, include_path),
        limit=limit or None,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    rows = []
    for task, samples in sorted(results["samples"].items()):
        for sample in samples:
            responses = sample.get("filtered_resps") or []
            prediction = responses[0] if responses and isinstance(responses[0], str) else None
            for metric in sample.get("metrics", []):
                score = _value(sample.get(metric))
                rows.append(
                    EvalRow(
                        pool_id=f"{ROW_PREFIX}:{task}:{sample['doc_id']}",
                        task=task,
                        metric=metric,
                        score=score,
                        loss=None,
                        prediction=prediction,
                        reason="" if score is not None else f"lm-eval gave no number for {metric}",
                    )
                )
    return rows
