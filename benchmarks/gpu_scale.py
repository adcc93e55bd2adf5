"""Model passes at 1B and 8B scale: examples/s and peak memory, in one run per machine.

Random-initialised Llama configs (no weights needed; Llama-3.2-1B and Llama-3.1-8B shapes) on
random token sequences (``--seq`` tokens, the second half the response). For each config:

- loss scoring: per-example response loss, no gradient, batches of ``--batch``;
- gradient features with LESS's settings (LoRA r=128, alpha=512 on q/k/v/o, d=8192): the exact
  path (per-example gradients from one backward pass, Adam direction, block projection; the
  projection's share of the time printed) and the factorised path (k=16 per side, count sketch
  to d);
- the same exact features through a batch-size-1 reference loop like LESS's (one backward per
  example, flattened gradient, projection every 16 examples);
- one LoRA fine-tuning step (AdamW) per batch.

On CUDA each part runs once untimed first (the first pass over new shapes is warm-up).
A part that runs out of memory says so and the run goes on. On CUDA the model is bf16; on CPU
it is float32 and ``--configs 1b --examples 2`` is the sensible size (it prints the same table).

Usage: python benchmarks/gpu_scale.py [--configs 1b 8b] [--examples 32] [--seq 512] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32},
}
LESS_LORA = {"r": 128, "alpha": 512, "dropout": 0.0}
DIM, FACTOR, PROJECT_INTERVAL = 8192, 16, 16


def build(name: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dsel_assets.core.models.lora import LoraSettings, add_lora, lora_parameters

    config = LlamaConfig(**CONFIGS[name], num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model = add_lora(model, LoraSettings(**LESS_LORA), seed=0)
    with torch.no_grad():  # a warmed-up adapter: non-zero B, so A's gradients are non-zero too
        for param_name, param in lora_parameters(model):
            if "lora_B" in param_name:
                param.normal_(0, 0.02)
    return model.eval()


def batches(n: int, seq: int, size: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128000, (n, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    mask = torch.ones_like(ids)
    return [
        {"input_ids": ids[s : s + size], "labels": labels[s : s + size], "attention_mask": mask[s : s + size]}
        for s in range(0, n, size)
    ]


def timed(device: str, work) -> tuple[float, float, dict]:
    """(seconds, peak GB, extra) of ``work()``, on CUDA after one untimed call (kernel selection and
    allocator warm-up); peak is CUDA memory or the process's RSS."""
    import resource

    import torch

    if device.startswith("cuda"):
        work()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    extra = work() or {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return time.perf_counter() - started, peak, extra


def parts(model, data, device: str, n: int) -> dict:
    import torch

    from dsel_assets.core.models.factorised import REPROJECT_STREAM, FactorisedGradients, count_sketch
    from dsel_assets.core.models.gradients import PerExampleGradients, adam_features
    from dsel_assets.core.models.lora import lora_parameters
    from dsel_assets.core.models.projection import BlockProjector
    from dsel_assets.core.models.sft import per_example_loss

    params = [p for _, p in lora_parameters(model)]
    state = [torch.full((sum(p.numel() for p in params),), value, device=device) for value in (1e-4, 1e-6)]
    projector = BlockProjector(len(state[0]), DIM, device=device, dtype="bfloat16" if device != "cpu" else "float32")

    def scoring():
        with torch.no_grad():
            for batch in data:
                per_example_loss(model, batch)

    def exact():
        projecting = 0.0
        with PerExampleGradients(model) as hooks:
            for batch in data:
                grads, _ = hooks.compute(batch)
                grads = adam_features(grads, *state)
                started = time.perf_counter()
                projector.project(grads)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                projecting += time.perf_counter() - started
        return {"projection": projecting}

    def factorised():
        names = [name for name, _ in lora_parameters(model)]
        with FactorisedGradients(model, FACTOR, 0) as hooks:
            shapes = dict(zip(names, hooks.shapes, strict=True))
            hooks.set_adam(
                {k: torch.full(s, 1e-4, device=device) for k, s in shapes.items()},
                {k: torch.full(s, 1e-6, device=device) for k, s in shapes.items()},
            )
            for batch in data:
                grads, _ = hooks.compute(batch)
                count_sketch(grads, DIM, 0, REPROJECT_STREAM)

    def reference():
        pending = []
        for batch in data:
            for row in range(len(batch["input_ids"])):
                one = {k: v[row : row + 1] for k, v in batch.items()}
                per_example_loss(model, one).sum().backward()
                pending.append(adam_features(torch.cat([p.grad.reshape(-1).float() for p in params]), *state))
                model.zero_grad(set_to_none=True)
                if len(pending) == PROJECT_INTERVAL:
                    projector.project(torch.stack(pending))
                    pending.clear()
        if pending:
            projector.project(torch.stack(pending))

    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def finetune():
        model.train()
        for batch in data:
            per_example_loss(model, batch).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()

    results = {}
    for name, work in (
        ("loss scoring", scoring),
        ("features, exact", exact),
        (f"features, factorised k={FACTOR}", factorised),
        ("features, batch-1 reference loop", reference),
        ("LoRA fine-tuning step", finetune),
    ):
        try:
            seconds, peak, extra = timed(device, work)
            results[name] = (n / seconds, peak, extra)
        except torch.OutOfMemoryError:
            results[name] = None
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        print(f"  {name}: {'out of memory' if results[name] is None else f'{n / seconds:.2f} examples/s'}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS), help="default: 1b 8b (CPU: 1b)")
    parser.add_argument("--examples", type=int, default=None, help="default 32 on CUDA, 2 on CPU")
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (default 512 on CUDA, 128 on CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    import torch

    from dsel_assets.core.models.loading import pick_device

    device = pick_device(args.device)
    cuda = device.startswith("cuda")
    configs = args.configs or (["1b", "8b"] if cuda else ["1b"])
    n, seq = args.examples or (32 if cuda else 2), args.seq or (512 if cuda else 128)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    print(f"{where}; {n} examples of {seq} tokens, batch {min(args.batch, n)}; LoRA {LESS_LORA}, d={DIM}", flush=True)
    rows = []
    for name in configs:
        print(f"{name}:", flush=True)
        model = build(name, device)
        results = parts(model, batches(n, seq, min(args.batch, n), device), device, n)
        reference = results.get("features, batch-1 reference loop")
        for part, result in results.items():
            if result is None:
                rows.append((name, part, "out of memory", "-", "-"))
                continue
            rate, peak, extra = result
            ratio = f"{rate / reference[0]:.1f}x" if reference and part.startswith("features") else "-"
            share = extra.get("projection")
            note = f"{ratio}" + (f"; projection {share * rate / n:.0%} of the time" if share else "")
            rows.append((name, part, f"{rate:.2f}", f"{peak:.1f}", note))
        del model
        if cuda:
            torch.cuda.empty_cache()
    print("\n| config | part | examples/s | peak GB | vs batch-1 reference |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
