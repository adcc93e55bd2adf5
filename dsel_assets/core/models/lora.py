"""LoRA adapters (peft) and the fixed parameter order gradient features use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LoraSettings:
    """LoRA shape. LESS uses r=128, alpha=512 for 7B models; small models need less."""

    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout while training"})
    targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"help": "modules"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r: must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("targets: at least one module name")

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


def add_lora(model, settings: LoraSettings, seed: int = 0):
    """Wrap ``model`` with fresh LoRA adapters (seeded init); base weights frozen."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def lora_parameters(model) -> list[tuple[str, object]]:
    """(name, parameter) of every trainable LoRA weight, in the model's own order: the
    order features are concatenated in, and the keys of the saved Adam state."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad and "lora_" in name]
