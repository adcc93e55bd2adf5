"""LoRA supervised fine-tuning on a selection: the model whose evaluation says what the
selection is worth. Same base model, seed and hyperparameters for every selection, loss on
assistant tokens only; the adapter and a manifest (config, curve, selection version) are
written as safetensors / JSON."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .lora import LoraSettings
from .sft import Encoded
from .warmup import train_lora

ADAPTER_DIR = "adapter"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters shared by every fine-tuned model of a comparison."""

    epochs: int = field(default=3, metadata={"help": "passes over the selection"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (linear decay)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps with linear warm-up"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (right-truncated)"})
    seed: int = field(default=0, metadata={"help": "shuffling and LoRA init seed"})
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=8, alpha=16, dropout=0.05))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")

    def to_dict(self) -> dict:
        return {**asdict(self), "lora": self.lora.to_dict()}


def selection_version(method: str, budget: str, pool_ids: list[str], pool_version: str) -> str:
    """Content hash of a selection (method, budget, ordered ids, pool version): what a
    fine-tuned model names as the data it trained on."""
    payload = json.dumps([method, budget, pool_version, pool_ids])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_key(config: FinetuneConfig, selection: str, base_model_hash: str, code_version: str) -> str:
    """Directory key of a fine-tuned model: the same inputs give the same key (and are reused)."""
    payload = json.dumps([config.to_dict(), selection, base_model_hash, code_version], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def finetune(
    base_model,
    encoded: list[Encoded],
    config: FinetuneConfig,
    out_dir: Path,
    pad_id: int,
    manifest_extra: dict | None = None,
    log: Callable[[str], None] = print,
    max_tokens: int | None = None,
) -> dict:
    """Train a fresh LoRA adapter on ``encoded`` and write ``out_dir/adapter`` and
    ``out_dir/manifest.json``; returns the manifest (config, curve, examples, extra).
    The adapter is unloaded afterwards, so ``base_model`` (frozen while training) is the
    untouched base again and can train the next selection. ``max_tokens``: padded tokens per
    micro-batch (see :func:`~.warmup.train_lora`)."""
    model, curve = train_lora(base_model, encoded, config, pad_id, log, label="finetune", max_tokens=max_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir / ADAPTER_DIR)
    model.unload()
    manifest = {
        "config": config.to_dict(),
        "examples": len(encoded),
        "tokens": sum(len(e.input_ids) for e in encoded),
        "curve": curve,
        **(manifest_extra or {}),
    }
    # the manifest is written last: a directory with a manifest is a complete model
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def read_finetuned(out_dir: Path) -> dict | None:
    """The manifest of a complete fine-tuned model, or None when there is none (yet)."""
    path = out_dir / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_finetuned(base_model, out_dir: Path):
    """``base_model`` with the adapter in ``out_dir`` (inference mode)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(out_dir / ADAPTER_DIR), is_trainable=False).eval()
