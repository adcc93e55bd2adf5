"""LESS gradient features: LESS-style reference vs our batched implementation, one run.

Both sides use SmolLM2-135M-Instruct with LoRA r=8 on q,k,v,o, the same simulated warmup
checkpoint (seeded non-zero lora_B and Adam moments), the same 256 real examples
(../shared/data pool, round-robin over its files; synthetic when absent), max length 256,
and the same seeded block projection to d dimensions.

- reference (LESS collect_grads): one example per forward/backward with the full-vocabulary
  loss, flatten the LoRA gradient, Adam feature, project every 16 examples (LESS's
  project_interval; TRAK's CPU projector regenerates its matrix on every call), float32.
- ours: dsel_assets.core.models.features.gradient_features with default settings: length
  bucketed batches, per-example gradients from one backward pass (hooks), response-only
  vocabulary projection, one projection call per 128-example chunk (bf16 matmul where the
  CPU/GPU supports it), and ``compute_dtype=auto``: on CUDA float32 matmuls with bf16
  products and fp32 accumulation, on CPUs strict fp32. ``ours-fp32`` runs the forward/backward
  in strict fp32 everywhere (the projection dtype stays ``auto``); ``ours-bf16`` (opt-in part)
  runs it under bf16 autocast.
- floor: the physical floor of ours - the same length-bucketed batches, one plain batched
  forward + backward of the mean loss (LoRA gradients only: no per-example hooks, no Adam
  feature, no projection), in the same precision as ``ours``.

``--contend`` repeats ``ours`` with a second CPU-bound process beside it (a torch matmul loop at
its own default thread count - an uncoordinated neighbour, as a second dsel process is) and
reports its rate against the idle one. ``--threads N`` sets DSEL_THREADS for the parts.

Each side runs in its own process (so peak RSS is its own). Prints a markdown table.
Usage: python benchmarks/grad_features.py [--n 256] [--dim 8192] [--device auto] [--contend]
       [--parts reference ours ours-fp32 floor]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_POOL = ROOT.parent / "shared" / "data" / "pool"
MAX_LENGTH = 256
PROJECT_INTERVAL = 16
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DSEL_THREADS")


def load_examples(n: int) -> tuple[list[tuple[str, list[dict]]], str]:
    from dsel_assets.core.data.catalog import expand_paths
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.data.validate import validate_file

    if SHARED_POOL.is_dir():
        per_file = [validate_file(p).accepted for p in expand_paths([SHARED_POOL])]
        rng = np.random.default_rng(0)
        per_file = [[rows[i] for i in rng.permutation(len(rows))] for rows in per_file]
        items, depth = [], 0
        while len(items) < n:
            items += [(rows[depth]["pool_id"], rows[depth]["messages"]) for rows in per_file if depth < len(rows)]
            depth += 1
        return items[:n], f"shared/data pool ({len(per_file)} files, round-robin)"
    from dsel_assets.core.data.schema import example_id

    pool = generate(seed=0, per_capability=n // 6 + 1).pool[:n]
    return [(example_id(r["messages"]), r["messages"]) for r in pool], "synthetic (shared data absent)"


def setup(device: str):
    """SmolLM2 + LoRA r=8 (q,k,v,o) with a simulated warmup checkpoint, identical in every process."""
    import torch

    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.models.lora import LoraSettings, add_lora, lora_parameters

    spec = resolve("smollm2")
    model = add_lora(load_causal_lm(spec, device=device, dtype="float32"), LoraSettings(r=8, dropout=0.0), seed=0)
    state = {"exp_avg": {}, "exp_avg_sq": {}}
    with torch.no_grad():
        for i, (name, p) in enumerate(lora_parameters(model)):
            gen = torch.Generator().manual_seed(1000 + i)
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            state["exp_avg"][name] = torch.randn(p.shape, generator=gen) * 1e-4
            state["exp_avg_sq"][name] = (torch.randn(p.shape, generator=gen) * 1e-3) ** 2
    return model.eval(), load_tokenizer(spec), state


def run_reference(model, tokenizer, state, items, dim):
    import torch

    from dsel_assets.core.models.gradients import adam_features
    from dsel_assets.core.models.lora import lora_parameters
    from dsel_assets.core.models.projection import BlockProjector
    from dsel_assets.core.models.sft import collate, encode_conversation

    params = lora_parameters(model)
    device = next(model.parameters()).device
    m = torch.cat([state["exp_avg"][n].reshape(-1) for n, _ in params]).to(device)
    v = torch.cat([state["exp_avg_sq"][n].reshape(-1) for n, _ in params]).to(device)
    projector = BlockProjector(m.numel(), dim, seed=0, device=str(device), dtype="float32")
    ids, feats, pending = [], [], []
    for item_id, messages in items:
        enc = encode_conversation(tokenizer, messages, MAX_LENGTH)
        if enc is None:
            continue
        batch = {k: t.to(device) for k, t in collate([enc], tokenizer.pad_token_id).items()}
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for _, p in params])
        pending.append(adam_features(grad, m, v))
        ids.append(item_id)
        if len(pending) == PROJECT_INTERVAL:
            feats.append(projector.project(torch.stack(pending)))
            pending = []
    if pending:
        feats.append(projector.project(torch.stack(pending)))
    out = torch.cat(feats)
    return ids, (out / out.norm(dim=1, keepdim=True)).cpu().numpy()


def run_ours(model, tokenizer, state, items, dim, compute_dtype):
    from dsel_assets.core.models.features import FeatureConfig, gradient_features

    config = FeatureConfig(dim=dim, max_length=MAX_LENGTH, compute_dtype=compute_dtype)
    ids, feats = [], []
    for chunk in gradient_features(model, tokenizer, items, config, state):
        ids += chunk.ids
        feats.append(chunk.features.astype(np.float32))
    return ids, np.concatenate(feats)


def run_floor(model, tokenizer, items, compute_dtype):
    """Plain batched forward + backward over ours's batches: the cost no per-example method avoids."""
    from dsel_assets.core.models.features import FeatureConfig
    from dsel_assets.core.models.loading import compute_precision
    from dsel_assets.core.models.sft import collate, encode_conversation, length_batches

    config = FeatureConfig(max_length=MAX_LENGTH, compute_dtype=compute_dtype)
    device = next(model.parameters()).device
    pairs = [(i, encode_conversation(tokenizer, m, MAX_LENGTH)) for i, m in items]
    ids, encoded = [i for i, e in pairs if e is not None], [e for _, e in pairs if e is not None]
    for group in length_batches([len(e.input_ids) for e in encoded], config.batch_size, config.max_batch_tokens):
        batch = {k: t.to(device) for k, t in collate([encoded[i] for i in group], tokenizer.pad_token_id).items()}
        with compute_precision(config.compute_dtype, device):
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    return ids, None


def contender() -> subprocess.Popen:
    """A CPU-bound neighbour: torch matmuls at torch's default thread count and OpenMP settings
    (none of dsel's), until killed."""
    code = "import torch\na = torch.randn(768, 768)\nwhile True:\n    a = torch.tanh(a @ a)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_") and k not in THREAD_VARIABLES}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def part(args) -> None:
    import torch

    from dsel_assets.core.models.features import projection_dtype
    from dsel_assets.core.models.loading import compute_precision, pick_device
    from dsel_assets.core.threads import size_threads

    print(f"{args.part}: {size_threads()}", file=sys.stderr)  # as every dsel model step does
    torch.manual_seed(0)
    device = pick_device(args.device)
    items = [tuple(item) for item in json.loads((Path(args.out) / "items.json").read_text())]
    model, tokenizer, state = setup(device)
    started = time.perf_counter()
    if args.part == "reference":
        ids, feats = run_reference(model, tokenizer, state, items, args.dim)
        dtype = "float32"
    elif args.part == "floor":
        ids, feats = run_floor(model, tokenizer, items, "auto")
        with compute_precision("auto", torch.device(device)) as resolved:
            dtype = f"{resolved} / -"
    else:
        compute = {"ours": "auto", "ours-fp32": "model", "ours-bf16": "bfloat16"}[args.part.removesuffix("-contended")]
        ids, feats = run_ours(model, tokenizer, state, items, args.dim, compute)
        with compute_precision(compute, torch.device(device)) as resolved:
            dtype = f"{resolved} / {projection_dtype('auto', torch.device(device))}"
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if feats is not None:
        np.save(Path(args.out) / f"{args.part}.npy", feats)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {
        "ids": ids,
        "seconds": seconds,
        "rss_mb": rss_mb,
        "device": device,
        "dtype": dtype,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
    }
    (Path(args.out) / f"{args.part}.json").write_text(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", nargs="+", default=["reference", "ours", "ours-fp32", "floor"])
    parser.add_argument("--contend", action="store_true", help="also time ours beside a CPU-bound process")
    parser.add_argument("--threads", type=int, help="DSEL_THREADS for every part")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        part(args)
        return
    items, source = load_examples(args.n)  # once; every part reads the same examples from items.json
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = list(args.parts) + (["ours-contended"] if args.contend else [])
    env = {**os.environ, **({"DSEL_THREADS": str(args.threads)} if args.threads else {})}
    with tempfile.TemporaryDirectory() as out:
        (Path(out) / "items.json").write_text(json.dumps(items))
        for name in parts:
            cmd = [
                sys.executable,
                __file__,
                "--part",
                name,
                "--out",
                out,
                "--n",
                str(args.n),
                "--dim",
                str(args.dim),
                "--device",
                args.device,
            ]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            neighbour = contender() if name.endswith("-contended") else None
            try:
                subprocess.run(cmd, check=True, env=env)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
        results = {n: json.loads((Path(out) / f"{n}.json").read_text()) for n in parts}
        feats = {n: np.load(Path(out) / f"{n}.npy") for n in parts if (Path(out) / f"{n}.npy").exists()}
    ref = results.get("reference")
    print(
        f"\nLESS gradient features: {args.n} examples from {source}, SmolLM2-135M, LoRA r=8 (q,k,v,o), "
        f"max length {MAX_LENGTH}, d={args.dim}, device {next(iter(results.values()))['device']}, "
        f"{os.cpu_count()} cores, load average before the run {load_before}\n"
    )
    print(
        "| implementation | forward-backward / projection dtype | examples/s | speed-up vs reference "
        "| cosine to reference (min / mean) | peak RSS (MB) | threads |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, info in results.items():
        rate = len(info["ids"]) / info["seconds"]
        if ref is not None and name in feats:
            row_of = {i: k for k, i in enumerate(ref["ids"])}
            ours = feats[name][[k for k, i in enumerate(info["ids"]) if i in row_of]]
            base = feats["reference"][[row_of[i] for i in info["ids"] if i in row_of]]
            cos = (ours * base).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(base, axis=1))
            speedup = rate / (len(ref["ids"]) / ref["seconds"])
            cos_text = f"{cos.min():.6f} / {cos.mean():.6f}"
        else:
            speedup, cos_text = float("nan"), "-"
        gpu = f" (GPU peak {info['gpu_peak_mb']:.0f} MB)" if info.get("gpu_peak_mb") else ""
        print(
            f"| {name} | {info['dtype']} | {rate:.2f} | {speedup:.2f}x | {cos_text} | {info['rss_mb']:.0f}{gpu} "
            f"| {info['threads']} |"
        )
    rates = {n: len(i["ids"]) / i["seconds"] for n, i in results.items()}
    if "floor" in rates and "ours" in rates:
        print(f"\nours takes {rates['floor'] / rates['ours']:.2f}x the time of the plain forward+backward floor")
    if "ours-contended" in rates and "ours" in rates:
        print(f"beside a CPU-bound process ours keeps {rates['ours-contended'] / rates['ours']:.0%} of its idle rate")


if __name__ == "__main__":
    main()
