"""LESS warmup (docs/methods/less.md): LoRA-train on a seeded random fraction of the pool and
save, per epoch, the adapter, the AdamW state keyed by parameter name and the epoch's mean
learning rate. Everything is written as safetensors / JSON (no pickle)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .loading import bf16_autocast
from .lora import LoraSettings, add_lora, lora_parameters
from .sft import Encoded, collate, length_batches, per_example_loss

ADAPTER_DIR = "adapter"
OPTIMIZER_FILE = "optimizer.safetensors"
MANIFEST = "manifest.json"


class TrainSettings(Protocol):
    """What :func:`train_lora` reads from a config (warmup, fine-tuning, round training)."""

    epochs: int
    lr: float
    warmup_ratio: float
    batch_size: int
    seed: int
    lora: LoraSettings


@dataclass(frozen=True)
class WarmupConfig:
    fraction: float = field(default=0.05, metadata={"help": "share of the pool to train on"})
    epochs: int = field(default=2, metadata={"help": "epochs; one checkpoint per epoch"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (linear decay)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps with linear warm-up"})
    batch_size: int = field(default=8, metadata={"help": "examples per step"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (right-truncated)"})
    seed: int = field(default=0, metadata={"help": "sampling, shuffling and LoRA init seed"})
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction: must be in (0, 1], got {self.fraction}")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return {**asdict(self), "lora": self.lora.to_dict()}


def warmup_sample(pool_ids: list[str], fraction: float, seed: int) -> list[str]:
    """One seeded permutation over the whole (sorted) pool; its first ceil(p * N) ids."""
    ordered = sorted(pool_ids)
    k = max(1, math.ceil(fraction * len(ordered)))
    order = np.random.default_rng(seed).permutation(len(ordered))[:k]
    return [ordered[i] for i in sorted(order)]


@dataclass
class Checkpoint:
    epoch: int
    path: Path
    lr_mean: float


def adam_moments(model, optimizer) -> dict[str, dict]:
    """The optimizer's Adam moments of every LoRA weight, ``{"exp_avg": {name: tensor},
    "exp_avg_sq": {...}}`` (float32, CPU): what LESS's pool features are preconditioned with."""
    state: dict[str, dict] = {"exp_avg": {}, "exp_avg_sq": {}}
    for name, param in lora_parameters(model):
        entry = optimizer.state.get(param, {})
        for key in state:
            state[key][name] = entry[key].detach().float().cpu().contiguous()
    return state


def _save_checkpoint(model, optimizer, path: Path, lr_mean: float, epoch: int) -> Checkpoint:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path / ADAPTER_DIR)
    moments = adam_moments(model, optimizer)
    state = {f"{key}/{name}": tensor for key, by_name in moments.items() for name, tensor in by_name.items()}
    save_file(state, str(path / OPTIMIZER_FILE), metadata={"lr_mean": repr(lr_mean), "epoch": str(epoch)})
    return Checkpoint(epoch, path, lr_mean)


#: Padded tokens per training forward: a batch of 8 x 512 tokens kept ~7 GB of activations for
#: SmolLM2-135M's backward pass on the CPU; its gradient is formed in micro-batches instead.
MICRO_BATCH_TOKENS = 1024


class MicroBatches:
    """A training batch's gradient, formed in micro-batches of at most ``max_tokens`` padded tokens
    whose size also halves when one runs out of memory (and stays halved): the same gradient as one
    pass, since each micro-batch's mean loss counts by its share of the batch's examples."""

    def __init__(self, model, pad_id: int, size: int, autocast, log: Callable[[str], None], optimizer, max_tokens):
        self.model, self.pad_id, self.size, self.autocast = model, pad_id, size, autocast
        self.log, self.optimizer, self.max_tokens = log, optimizer, max_tokens

    def backward(self, examples: list[Encoded]) -> float:
        """Accumulate the batch's mean-loss gradient; returns the mean loss."""
        from ..memory import release_memory
        from .batching import is_out_of_memory

        while True:
            try:
                total = 0.0
                lengths = [len(e.input_ids) for e in examples]
                for group in length_batches(lengths, self.size, self.max_tokens):
                    part = [examples[i] for i in group]
                    with self.autocast:
                        loss = per_example_loss(self.model, collate(part, self.pad_id)).mean()
                    (loss * (len(part) / len(examples))).backward()
                    total += loss.item() * len(part) / len(examples)
                return total
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                self.optimizer.zero_grad(set_to_none=True)  # a half-accumulated gradient is discarded
                release_memory()
                if self.size == 1:
                    raise MemoryError(
                        "out of memory training on a single example: lower max_length, use gradient "
                        "checkpointing or load_in=4bit, or a device with more memory"
                    ) from error
                self.size = max(1, min(self.size, len(examples)) // 2)
                self.log(
                    f"out of memory on a training batch of {len(examples)}; micro-batches of {self.size} from now on"
                )


def train_lora(
    model,
    encoded: list[Encoded],
    config: TrainSettings,
    pad_id: int,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, object, object, float], None] | None = None,
    label: str = "train",
    on_step: Callable[[int, int], None] | None = None,
    max_tokens: int | None = None,
    next_epoch: Callable[[int, object, object], list[Encoded]] | None = None,
):
    """LoRA SFT on ``encoded``: AdamW, linear schedule with warm-up, length-bucketed batches in
    seeded random order, loss on response tokens. ``on_epoch(epoch, model, optimizer,
    mean_lr)`` runs after each epoch, ``on_step(steps done, steps in all)`` after each
    optimizer step; ``next_epoch(epoch, model, optimizer)``, after each epoch but the last,
    gives the data of the next (ClusterUCB's reselection; the schedule is planned from the
    first epoch's size). A batch's gradient is formed in micro-batches of at most ``max_tokens``
    padded tokens (default ``MICRO_BATCH_TOKENS``): the same update with a bounded memory.
    Returns (peft model, loss curve)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not encoded:
        raise ValueError(f"{label}: no trainable examples (all truncated away or empty selection)")
    torch.manual_seed(config.seed)
    model = add_lora(model, config.lora, seed=config.seed)
    model.train()
    params = [p for _, p in lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    total = math.ceil(len(encoded) / config.batch_size) * config.epochs
    # floor, not ceil: on a handful of steps a ceil'd warm-up would spend them all at lr 0
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    curve: list[dict] = []
    # bf16 autocast where the hardware has fast bf16 (fp32 master weights and optimizer state)
    autocast = bf16_autocast(params[0].device)
    accumulate = MicroBatches(
        model, pad_id, config.batch_size, autocast, log, optimizer, max_tokens or MICRO_BATCH_TOKENS
    )
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(encoded))
        lrs = []
        # similar lengths together, batches in random order
        groups = length_batches([len(encoded[i].input_ids) for i in order], config.batch_size)
        for group_index in rng.permutation(len(groups)):
            lrs.append(scheduler.get_last_lr()[0])
            loss = accumulate.backward([encoded[order[i]] for i in groups[group_index]])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append({"step": len(curve) + 1, "epoch": epoch, "loss": loss, "lr": lrs[-1]})
            if on_step is not None:
                on_step(len(curve), total)
        elapsed = time.perf_counter() - started
        eta = elapsed / epoch * (config.epochs - epoch)
        log(
            f"{label} epoch {epoch}/{config.epochs}: loss {np.mean([c['loss'] for c in curve[-len(lrs) :]]):.4f}, "
            f"{len(curve) / elapsed:.2f} steps/s, eta {eta:.0f}s"
        )
        if on_epoch is not None:
            on_epoch(epoch, model, optimizer, float(np.mean(lrs)))
        if next_epoch is not None and epoch < config.epochs:
            encoded = next_epoch(epoch, model, optimizer)
            if not encoded:
                raise ValueError(f"{label}: no trainable examples for epoch {epoch + 1}")
            model.train()
    model.eval()
    return model, curve


def train_warmup(
    model,
    encoded: list[Encoded],
    config: WarmupConfig,
    out_dir: Path,
    pad_id: int,
    manifest_extra: dict | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, int], None] | None = None,
    max_tokens: int | None = None,
) -> list[Checkpoint]:
    """Train LoRA on ``encoded`` (already the warmup sample) and save one checkpoint per
    epoch under ``out_dir/epoch-<e>/``, plus ``out_dir/manifest.json`` with the curve.
    ``max_tokens``: padded tokens per micro-batch (see :func:`train_lora`)."""
    checkpoints: list[Checkpoint] = []

    def save(epoch: int, peft_model, optimizer, lr_mean: float) -> None:
        checkpoints.append(_save_checkpoint(peft_model, optimizer, out_dir / f"epoch-{epoch}", lr_mean, epoch))

    _, curve = train_lora(
        model, encoded, config, pad_id, log, on_epoch=save, label="warmup", on_step=on_step, max_tokens=max_tokens
    )
    manifest = {
        "config": config.to_dict(),
        # relative paths: the folder may be uploaded and read back elsewhere
        "checkpoints": [
            {"epoch": c.epoch, "path": str(c.path.relative_to(out_dir)), "lr_mean": c.lr_mean} for c in checkpoints
        ],
        "curve": curve,
        "examples": len(encoded),
        **(manifest_extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return checkpoints


def read_manifest(out_dir: Path) -> dict:
    """The warmup's manifest, its checkpoint paths resolved against ``out_dir`` (wherever the
    folder now is; manifests written before paths became relative hold absolute ones)."""
    path = out_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"warmup: no manifest at {path}; materialize warmup_checkpoint first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for checkpoint in manifest["checkpoints"]:
        checkpoint["path"] = str(out_dir / checkpoint["path"])
    return manifest


def load_checkpoint(base_model, path: Path):
    """(model with the checkpoint's trainable adapter, {"exp_avg": {name: t}, "exp_avg_sq": {...}})."""
    from peft import PeftModel
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(base_model, str(path / ADAPTER_DIR), is_trainable=True)
    state: dict[str, dict] = {"exp_avg": {}, "exp_avg_sq": {}}
    for key, tensor in load_file(str(path / OPTIMIZER_FILE)).items():
        kind, name = key.split("/", 1)
        state[kind][name] = tensor
    return model, state
