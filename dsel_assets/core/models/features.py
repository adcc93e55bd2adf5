"""LESS gradient features (docs/methods/less.md): per-example LoRA gradients, Adam
preconditioning for pool examples (plain gradients for queries), seeded block projection,
L2 normalisation; or the factorised projection inside the hooks (:mod:`.factorised`), which
never forms a per-example gradient. Produced in chunks so callers can persist and resume chunk
by chunk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from .batching import Batching
from .factorised import REPROJECT_STREAM, FactorisedGradients, count_sketch
from .gradients import PerExampleGradients, adam_features
from .loading import COMPUTE_DTYPES, compute_precision
from .projection import FACTORISED, PROJECTIONS, BlockProjector
from .sft import collate, encode_conversation


@dataclass(frozen=True)
class FeatureConfig:
    dim: int = field(default=8192, metadata={"help": "projected dimension d"})
    projection: str = field(
        default="rademacher",
        metadata={"help": "rademacher | gaussian (exact per-example gradients) | factorised (LoGra style, big models)"},
    )
    factor_dim: int = field(default=16, metadata={"help": "factorised: k per side of each LoRA matrix's k x k block"})
    projection_seed: int = field(default=0, metadata={"help": "seed of the projection matrix"})
    projection_dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 (matmul dtype)"})
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto | model (strict) | bf16_matmul (fp32 tensors, bf16 matmul products) | "
            "bfloat16 (autocast forward/backward)"
        },
    )
    max_length: int = field(default=512, metadata={"help": "tokens per example (right-truncated)"})
    batch_size: int = field(default=8, metadata={"help": "examples per backward pass"})
    max_batch_tokens: int = field(
        default=1024, metadata={"help": "padded tokens per backward pass (~1k stays in CPU cache)"}
    )
    chunk: int = field(default=128, metadata={"help": "examples per projection call and per write"})
    textbook_adam: bool = field(default=False, metadata={"help": "sqrt(v)+eps instead of sqrt(v+eps)"})

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype: {self.compute_dtype!r} is not one of {list(COMPUTE_DTYPES)}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection: {self.projection!r} is not one of {list(PROJECTIONS)}")
        if self.projection == FACTORISED and self.textbook_adam:
            raise ValueError("textbook_adam: applies to the exact projections only, not 'factorised'")
        for name in ("dim", "max_length", "batch_size", "max_batch_tokens", "chunk", "factor_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def projection_dtype(preference: str, device) -> str:
    """``auto``: bf16 where the hardware multiplies it fast (CUDA, CPUs with AVX512-BF16 /
    AMX through oneDNN), else float32. Entries of P are exact in bf16; the rounding of the
    gradients costs < 1e-5 in cosine (see benchmarks/grad_features.py)."""
    import torch

    if preference != "auto":
        return preference
    if getattr(device, "type", str(device)).startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


@dataclass
class FeatureChunk:
    ids: list[str]
    features: np.ndarray  # [n, dim] float16, unit rows
    losses: np.ndarray  # [n] response loss of each example
    seconds: float


def gradient_features(
    model,
    tokenizer,
    items: list[tuple[str, list[dict]]],
    config: FeatureConfig,
    optimizer_state: dict[str, dict] | None = None,
    excluded: list[tuple[str, str]] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    on_shrink: Callable[[str], None] | None = None,
) -> Iterator[FeatureChunk]:
    """Yield features of ``items`` (id, messages) chunk by chunk, longest first.

    With ``optimizer_state`` (``{"exp_avg": {name: t}, "exp_avg_sq": {...}}``) the Adam
    direction is used (pool examples); without it the plain gradient (queries). Examples
    left without response tokens by truncation are appended to ``excluded`` with a reason.
    A batch that runs out of memory is halved and retried (``on_shrink`` is told)."""
    import torch

    model.eval()  # dropout off: the gradient of the model as it is
    device = next(model.parameters()).device
    encoded, ids = [], []
    for item_id, messages in items:
        enc = encode_conversation(tokenizer, messages, config.max_length)
        if enc is None:
            if excluded is not None:
                excluded.append((item_id, f"no response tokens within max_length={config.max_length}"))
            continue
        encoded.append(enc)
        ids.append(item_id)
    order = np.argsort([-len(e.input_ids) for e in encoded], kind="stable")
    if config.projection == FACTORISED:
        hooks = FactorisedGradients(model, config.factor_dim, config.projection_seed)
        if optimizer_state is not None:
            _check_moments(hooks.names, optimizer_state)
            hooks.set_adam(optimizer_state["exp_avg"], optimizer_state["exp_avg_sq"])

        def per_batch(grads):
            return grads

        def project(rows):  # k x k blocks per LoRA matrix, count-sketched to d when their total differs
            if hooks.dim == config.dim:
                return rows
            return count_sketch(rows, config.dim, config.projection_seed, REPROJECT_STREAM)
    else:
        hooks = PerExampleGradients(model)
        projector = BlockProjector(
            hooks.dim,
            config.dim,
            config.projection_seed,
            config.projection,
            device=str(device),
            dtype=projection_dtype(config.projection_dtype, device),
        )
        moments = None
        if optimizer_state is not None:
            _check_moments(hooks.names, optimizer_state)
            moments = [
                torch.cat([optimizer_state[key][n].reshape(-1) for n in hooks.names]).to(device)
                for key in ("exp_avg", "exp_avg_sq")
            ]

        def per_batch(grads):
            return grads if moments is None else adam_features(grads, *moments, textbook=config.textbook_adam)

        project = projector.project
    batching = Batching(config.batch_size, config.max_batch_tokens, on_shrink)
    with hooks:
        done = 0
        for start in range(0, len(order), config.chunk):
            started = time.perf_counter()
            chunk = order[start : start + config.chunk]
            lengths = [len(encoded[i].input_ids) for i in chunk]
            rows, losses, chunk_ids = None, [], []

            def backward(group, chunk=chunk):
                batch = collate([encoded[chunk[i]] for i in group], tokenizer.pad_token_id)
                with compute_precision(config.compute_dtype, device):
                    grads, loss = hooks.compute(batch)
                return per_batch(grads), loss.float().cpu()

            for group, (grads, loss) in batching.run(lengths, backward):
                if rows is None:  # the chunk's rows in one buffer: no second copy to concatenate them
                    rows = grads.new_empty((len(chunk), grads.shape[1]))
                rows[len(chunk_ids) : len(chunk_ids) + len(group)] = grads
                losses.append(loss)
                chunk_ids += [ids[chunk[i]] for i in group]
            projected = project(rows)
            projected = projected / projected.norm(dim=1, keepdim=True).clamp(min=1e-12)
            done += len(chunk)
            if on_chunk is not None:
                on_chunk(done, len(order))
            yield FeatureChunk(
                chunk_ids,
                projected.cpu().numpy().astype(np.float16),
                torch.cat(losses).numpy(),
                time.perf_counter() - started,
            )


def _check_moments(names: list[str], optimizer_state: dict) -> None:
    missing = [n for n in names if n not in optimizer_state["exp_avg"]]
    if missing:
        raise KeyError(f"optimizer state: no Adam moments for {missing[0]} (checkpoint of another model?)")
