"""The model code's CUDA paths against the CPU in strict fp32, in one short run per machine.

The real SmolLM2 weights (98 MB as GGUF) do not fit what travels to a GPU machine, so both
sides build the same random Llama (4 layers, hidden 256, the SmolLM2 tokenizer's vocabulary;
weights drawn from numpy's seeded generator, identical on any torch or transformers version)
and use the same 64 real Alpaca-GPT4 records from ../shared/data.

``--prepare DIR`` (on the CPU machine) writes the tokenizer, the records and the CPU
references into DIR: per-example losses (conditioned and unconditioned), IFD, and LESS
gradient features (d = 1024), all in strict fp32. ``--check DIR`` (on the GPU machine) runs,
on CUDA:

- loss / IFD scoring, strict fp32 and the default (bf16 autocast body): max |loss difference|,
  max |IFD difference| against the CPU;
- gradient features, strict and default (fp32 tensors with bf16 matmul products, bf16
  projection): the smallest cosine
  between an example's CUDA and CPU feature;
- two epochs of LoRA fine-tuning (bf16 autocast): first and last epoch's mean loss;
- greedy generation (bf16 autocast): 16 replies of up to 16 tokens;
- examples per second of scoring and features, after one untimed pass (on an H200 the first
  pass over new batch shapes ran at 68-130 examples/s, the next at 574).

It fails (exit 1) when a strict comparison is off by more than float32 reordering allows
(loss 1e-3, feature cosine 0.999) or fine-tuning does not lower the loss; the bf16 figures
are printed for the record.

Usage: python benchmarks/cuda_check.py --prepare DIR | --check DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
RECORDS = 64
FEATURE_DIM = 1024


def random_llama(tokenizer, seed: int = 0):
    """4-layer Llama whose weights come from numpy's seeded PCG64, parameter by sorted name."""
    import torch

    from dsel_assets.core.models.loading import tiny_llama

    model = tiny_llama(tokenizer, hidden_size=256, intermediate_size=768, layers=4, heads=8, kv_heads=4)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.from_numpy(rng.normal(0.0, 0.05, size=tuple(parameter.shape)).astype(np.float32)))
    return model.float()


def scores(model, tokenizer, items, precision: str) -> np.ndarray:
    """[n, 3]: conditioned loss, unconditioned loss, IFD of each item."""
    from dsel_assets.core.models.scoring import score_examples

    found = dict(score_examples(model, tokenizer, items, max_length=512, batch_size=8, precision=precision))
    ordered = [found[i] for i, _ in items]
    return np.array([[s.loss_conditioned, s.loss_unconditioned, s.ifd_loss_ratio] for s in ordered])


def features(model, tokenizer, items, compute_dtype: str, projection: str) -> np.ndarray:
    from dsel_assets.core.models.features import FeatureConfig, gradient_features
    from dsel_assets.core.models.lora import LoraSettings, add_lora

    lora = add_lora(model, LoraSettings(dropout=0.0), seed=0)
    config = FeatureConfig(dim=FEATURE_DIM, compute_dtype=compute_dtype, projection_dtype=projection)
    rows = {}
    for chunk in gradient_features(lora, tokenizer, items, config):
        rows |= dict(zip(chunk.ids, chunk.features.astype(np.float32), strict=True))
    return np.stack([rows[i] for i, _ in items])


def records() -> list[tuple[str, list[dict]]]:
    data = json.loads((SHARED / "pool" / "alpaca_gpt4_9k.json").read_text(encoding="utf-8"))[:RECORDS]
    items = []
    for index, record in enumerate(data):
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        items.append((f"r{index:03d}", messages))
    return items


def prepare(folder: Path) -> None:
    from dsel_assets.core.models.loading import allow_cpu_bf16, load_tokenizer, resolve

    allow_cpu_bf16(False)  # strict fp32 references

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(resolve("smollm2"))
    tokenizer.save_pretrained(folder / "tokenizer")
    items = records()
    (folder / "records.json").write_text(json.dumps(items), encoding="utf-8")
    np.save(folder / "scores.npy", scores(random_llama(tokenizer), tokenizer, items, "model"))
    np.save(folder / "features.npy", features(random_llama(tokenizer), tokenizer, items, "model", "float32"))
    print(f"wrote {folder}: tokenizer, {len(items)} records, CPU strict scores and features")


def timed(function, *args):
    import torch

    started = time.perf_counter()
    result = function(*args)
    torch.cuda.synchronize()
    return result, time.perf_counter() - started


def check(folder: Path) -> int:
    import torch
    from transformers import AutoTokenizer

    from dsel_assets.core.models.generation import greedy_generate
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.models.warmup import WarmupConfig, train_lora

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    items = [(i, m) for i, m in json.loads((folder / "records.json").read_text(encoding="utf-8"))]
    cpu_scores, cpu_features = np.load(folder / "scores.npy"), np.load(folder / "features.npy")

    def model():
        return random_llama(tokenizer).cuda()

    failures = []
    print("\n| path | CUDA vs CPU strict fp32 | examples/s |\n|---|---|---|")
    for precision in ("model", "auto"):
        scores(model(), tokenizer, items, precision)  # warm-up: the first pass over new shapes runs 4-8x slower
        found, seconds = timed(scores, model(), tokenizer, items, precision)
        loss_gap = float(np.nanmax(np.abs(found[:, :2] - cpu_scores[:, :2])))
        ifd_gap = float(np.nanmax(np.abs(found[:, 2] - cpu_scores[:, 2])))
        print(f"| scoring, {precision} | max abs loss {loss_gap:.2e}, IFD {ifd_gap:.2e} | {len(items) / seconds:.1f} |")
        if precision == "model" and loss_gap > 1e-3:
            failures.append(f"strict scoring differs from the CPU by {loss_gap:.2e}")
    for compute, projection in (("model", "float32"), ("auto", "auto")):
        features(model(), tokenizer, items, compute, projection)  # warm-up
        found, seconds = timed(features, model(), tokenizer, items, compute, projection)
        norms = np.linalg.norm(found, axis=1) * np.linalg.norm(cpu_features, axis=1)  # float16 rows: not exactly 1
        cosine = float(((found * cpu_features).sum(axis=1) / norms).min())
        print(f"| features, {compute} / {projection} | min cosine {cosine:.5f} | {len(items) / seconds:.1f} |")
        if compute == "model" and cosine < 0.999:
            failures.append(f"strict features: min cosine {cosine:.5f} to the CPU")
    encoded = [e for e in (encode_conversation(tokenizer, m, 512) for _, m in items) if e is not None]
    config = WarmupConfig(epochs=2, lr=1e-3, batch_size=8)
    _, curve = train_lora(model(), encoded, config, tokenizer.pad_token_id, log=lambda line: print(f"  {line}"))
    first = np.mean([c["loss"] for c in curve if c["epoch"] == 1])
    last = np.mean([c["loss"] for c in curve if c["epoch"] == 2])
    print(f"\nfine-tuning (bf16 autocast): mean loss epoch 1 {first:.4f}, epoch 2 {last:.4f}")
    if not last < first:
        failures.append("fine-tuning did not lower the loss")
    texts = [tokenizer.apply_chat_template(m[:1], add_generation_prompt=True, tokenize=False) for _, m in items[:16]]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    replies = greedy_generate(model(), tokenizer, prompts, 16, 8)
    print(f"greedy generation: {len(replies)} replies, {sum(map(len, replies))} tokens")
    if len(replies) != len(prompts) or not all(len(r) <= 16 for r in replies):
        failures.append("greedy generation returned the wrong replies")
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "all strict CUDA paths match the CPU"))
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prepare", type=Path)
    group.add_argument("--check", type=Path)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
    else:
        sys.exit(check(args.check))


if __name__ == "__main__":
    main()
