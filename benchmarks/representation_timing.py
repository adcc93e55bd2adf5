"""Time per 1,000 pool examples of every representation (the needs of docs/methods/) on SmolLM2-135M.

One run, the representations' cores as the assets call them (float32 on CPU, CUDA when
present), on real pool examples from ../shared/data (round-robin over the pool files; synthetic
when absent). Each is timed on a sample and scaled linearly to 1k, except fixed costs, which
are listed apart (Nuggets' zero-shot pass over the anchors). Cherry's pre-experience is
composed from measured parts: the sample size that k-means + the perplexity band give for a
1k pool, times the measured fine-tuning cost per example, plus scoring 1k examples under the
adapted model (the loss-score rate). Prints a markdown table.

``loss_precision`` (its own part, ``--only loss_precision``): loss scoring of ``--precision-n``
(500) real examples in strict fp32 (the default where the hardware lacks bf16), with bf16
matmul products and fp32 accumulation, and under bf16 autocast (the default where it has
bf16) - rate, speed-up over strict, largest IFD difference and Spearman correlation of the
IFDs with strict.

``loss_floor`` (its own part, ``--only loss_floor``): strict fp32 scoring of the same examples
against a replay of only its linear layers on its own batches (float32 and bf16), which bounds
what any exact fp32 speed-up of scoring could reach on this machine.

Usage: python benchmarks/representation_timing.py [--n 64] [--anchors 100] [--candidates 4]
       [--only loss_scores golden_score loss_precision loss_floor ...] [--precision-n 500]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
ANCHORS = ROOT.parent / "shared" / "data" / "eval" / "alpaca_gpt4_kmeans_100.json"


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="examples per model-based measurement")
    parser.add_argument("--anchors", type=int, default=100, help="Nuggets anchors (the default task set is 100)")
    parser.add_argument("--candidates", type=int, default=4, help="Nuggets candidates timed against every anchor")
    parser.add_argument("--only", nargs="*", default=None, help="representation names to time (default: all)")
    parser.add_argument("--precision-n", type=int, default=500, help="examples of the loss_precision part")
    args = parser.parse_args()

    import torch
    from grad_features import load_examples, setup

    from dsel_assets.core.clustering import kmeans
    from dsel_assets.core.data.schema import example_text
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.data.validate import validate_file
    from dsel_assets.core.models.data_whisperer import whisperer_scores
    from dsel_assets.core.models.embeddings import encode, load_encoder
    from dsel_assets.core.models.features import FeatureConfig, gradient_features
    from dsel_assets.core.models.finetune import FinetuneConfig
    from dsel_assets.core.models.learning_percentage import compute_learning_percentages
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, pick_device, resolve
    from dsel_assets.core.models.model_embeddings import model_embeddings
    from dsel_assets.core.models.nuggets import one_shot_cached, prepare_anchors, zero_shot
    from dsel_assets.core.models.pre_experience import pre_experience_sample
    from dsel_assets.core.models.scoring import score_examples
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.models.warmup import WarmupConfig, train_lora

    device = pick_device()
    items, source = load_examples(1000)
    pool = [m for _, m in items]
    sample, sample_items = pool[: args.n], items[: args.n]
    if ANCHORS.exists():
        anchor_messages = [r["messages"] for r in validate_file(ANCHORS).accepted][: args.anchors]
    else:
        anchor_messages = [r["messages"] for r in generate(seed=1, per_capability=20).evals][: args.anchors]
    spec = resolve("smollm2")
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, device)
    print(f"# representation timing: SmolLM2-135M on {device} ({torch.get_num_threads()} threads), {source}\n")
    rows: list[tuple[str, str, int, float, str]] = []
    wanted = set(args.only) if args.only else None

    def record(name: str, how: str, n: int, seconds: float, note: str = "") -> None:
        rows.append((name, how, n, seconds, note))
        print(f"{name}: {seconds:.1f}s for {n} -> {seconds / n * 1000 / 60:.1f} min per 1k", flush=True)

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    sentence_vectors = None
    if want("sentence_embeddings") or want("labels") or want("cherry_pre_experience"):
        encoder = load_encoder(device=device)
        sentence_vectors, seconds = timed(lambda: encode(encoder, [example_text(m) for m in pool]))
        record("sentence_embeddings", "MiniLM, 1000 real examples", len(pool), seconds)
    if want("labels"):
        _, seconds = timed(lambda: kmeans(sentence_vectors, 50, 0))
        record("labels", "derived: k-means (50) on the 1k sentence embeddings", len(pool), seconds)
    for pooling in ("mean", "position_weighted", "last_token"):
        if want(f"model_embeddings_{pooling}"):
            _, seconds = timed(lambda pooling=pooling: model_embeddings(model, tokenizer, sample, pooling))
            record(f"model_embeddings_{pooling}", "last hidden layer, max length 512", len(sample), seconds)
    loss_seconds_per_example = None
    if want("loss_scores") or want("cherry_pre_experience"):
        _, seconds = timed(lambda: list(score_examples(model, tokenizer, sample_items)))
        loss_seconds_per_example = seconds / len(sample_items)
        record(
            "loss_scores",
            "L(A\\|Q), L(A), ppl, both IFDs, uncertainty (teacher-forced)",
            len(sample_items),
            seconds,
            "proxy_loss_scores: the same cost with the default proxy (SmolLM2); quality reads it (SQL only)",
        )
    if want("greedy_scores"):
        few = sample_items[: max(4, args.n // 4)]
        _, seconds = timed(lambda: list(score_examples(model, tokenizer, few, response="greedy", max_new_tokens=128)))
        record("greedy_scores", "uncertainty on <= 128-token greedy generations", len(few), seconds)
    if want("learning_percentage"):
        few = sample[: max(8, args.n // 2)]
        config = WarmupConfig(epochs=3, batch_size=8, max_length=512)
        _, seconds = timed(
            lambda: compute_learning_percentages(load_causal_lm(spec, device), tokenizer, few, config, lambda _: None)
        )
        record("learning_percentage", "3 LoRA epochs + 4 perplexity passes", len(few), seconds)
    if want("golden_score"):
        anchors = prepare_anchors(tokenizer, anchor_messages, 2048)
        _, zero_seconds = timed(lambda: zero_shot(model, anchors))
        candidates = pool[: args.candidates]
        _, seconds = timed(lambda: one_shot_cached(model, tokenizer, candidates, anchors, batch_size=16))
        record(
            "golden_score",
            f"one-shot over {len(anchors)} anchors (KV cache, batch 16)",
            len(candidates),
            seconds,
            f"+ {zero_seconds:.0f}s once per anchor set (zero-shot pass)",
        )
    if want("whisperer_score"):
        queries = anchor_messages[:10]
        eager = load_causal_lm(spec, device)
        eager.set_attn_implementation("eager")
        _, seconds = timed(lambda: whisperer_scores(eager, tokenizer, sample, queries, 5, 3, None, 32, 0))
        record("whisperer_score", "5 demos + 3 queries per prompt, 32 new tokens", len(sample), seconds)
        del eager
    if want("gradient_features"):
        lora_model, _, state = setup(device)
        config = FeatureConfig(dim=8192)
        few = sample_items[: max(16, args.n // 2)]
        _, seconds = timed(lambda: [c for c in gradient_features(lora_model, tokenizer, few, config, state)])
        record("gradient_features", "LESS Adam features, LoRA r=8, d=8192, max length 512", len(few), seconds)
        del lora_model
    if want("cherry_pre_experience"):
        # sample size for a 1k pool: the clusters decide it (perplexity only orders each band)
        perplexity = np.random.default_rng(0).uniform(1, 20, len(pool))
        chosen, _ = pre_experience_sample(sentence_vectors, perplexity, 100, 10, 0)
        core = FinetuneConfig(epochs=1)
        encoded = [e for m in sample if (e := encode_conversation(tokenizer, m, core.max_length))]
        base = load_causal_lm(spec, device)
        _, train_seconds = timed(lambda: train_lora(base, encoded, core, tokenizer.pad_token_id, lambda _: None))
        per_example = train_seconds / len(encoded)
        total = per_example * len(chosen) + loss_seconds_per_example * 1000
        record(
            "cherry_pre_experience",
            f"1k pool: {len(chosen)}-example sample, 1 epoch LoRA, then loss scores under the adapter",
            1000,
            total,
            f"training {per_example:.2f}s/example measured on {len(encoded)}",
        )

    precision_items = load_examples(args.precision_n)[0] if want("loss_precision") or want("loss_floor") else []
    if want("loss_precision"):
        loss_precision(model, tokenizer, precision_items)
    if want("loss_floor"):
        loss_floor(model, tokenizer, precision_items)
    print("\n| representation | what is timed | examples timed | seconds | minutes per 1k examples | note |")
    print("|---|---|---|---|---|---|")
    for name, how, n, seconds, note in rows:
        print(f"| {name} | {how} | {n} | {seconds:.1f} | {seconds / n * 1000 / 60:.1f} | {note} |")


def loss_precision(model, tokenizer, items) -> None:
    """Loss scoring in strict fp32, with bf16 products (fp32 accumulation) and under bf16
    autocast on the same examples: rate and agreement of the IFDs with strict fp32."""
    from scipy.stats import spearmanr

    from dsel_assets.core.models.scoring import score_examples

    modes = {"strict fp32": "model", "bf16 products, fp32 accumulation": "bf16_matmul", "bf16 autocast": "bfloat16"}
    ifd, seconds = {}, {}
    for label, mode in modes.items():
        scored, seconds[label] = timed(lambda mode=mode: dict(score_examples(model, tokenizer, items, precision=mode)))
        ifd[label] = np.array([scored[i].ifd_loss_ratio for i, _ in items])
        print(f"loss_precision {label}: {len(items) / seconds[label]:.2f} examples/s", flush=True)
    strict = ifd["strict fp32"]
    print(f"\n| loss scoring ({len(items)} real examples) | examples/s | vs strict | max abs IFD diff | Spearman |")
    print("|---|---|---|---|---|")
    for label in modes:
        both = np.isfinite(strict) & np.isfinite(ifd[label])
        diff = np.abs(ifd[label][both] - strict[both]).max()
        rho = spearmanr(ifd[label][both], strict[both]).statistic
        rate = len(items) / seconds[label]
        print(f"| {label} | {rate:.2f} | {seconds['strict fp32'] / seconds[label]:.2f}x | {diff:.2e} | {rho:.5f} |")


def loss_floor(model, tokenizer, items) -> None:
    """Strict fp32 loss scoring against the matrix products it cannot avoid: the same examples
    scored, then only the model's linear layers (body on every padded token, head on the
    response tokens) replayed on scoring's own batches with the model's weights, in float32
    and in bfloat16 (head float32, as scoring keeps it). Norms, attention, activations and the
    softmax are left out, so the float32 replay is a lower bound on any exact fp32 scoring of
    these batches, and scoring time / replay time an upper bound on its speed-up."""
    import torch
    import torch.nn.functional as F

    from dsel_assets.core.models.scoring import score_examples, scoring_inputs, turn_inputs
    from dsel_assets.core.models.sft import _backbone_and_head, length_batches

    body, head = _backbone_and_head(model)
    layers = [[m.weight.detach() for m in layer.modules() if isinstance(m, torch.nn.Linear)] for layer in body.layers]
    defaults = inspect.signature(score_examples).parameters  # the lengths and batches scoring uses
    turns = [pair for _, messages in items for pair in turn_inputs(tokenizer, messages, defaults["max_length"].default)]
    batches, real = [], 0  # (padded tokens, response tokens) per forward
    for _, encoded in scoring_inputs(turns):
        for group in length_batches([len(e.input_ids) for e in encoded], defaults["batch_size"].default):
            batch = [encoded[i] for i in group]
            batches.append((max(len(e.input_ids) for e in batch) * len(batch), sum(e.n_response for e in batch)))
            real += sum(len(e.input_ids) for e in batch)
    padded = sum(tokens for tokens, _ in batches)
    flops = 2 * sum(tokens * sum(w.numel() for layer in layers for w in layer) for tokens, _ in batches)
    flops += 2 * sum(response for _, response in batches) * head.weight.numel()

    def replay(dtype) -> float:
        weights = [[w.to(dtype) for w in layer] for layer in layers]
        inputs = {w.shape[1]: torch.randn(max(t for t, _ in batches), w.shape[1], dtype=dtype) for w in layers[0]}
        head_input = torch.randn(max(r for _, r in batches), head.weight.shape[1])
        started = time.perf_counter()
        with torch.no_grad():
            for tokens, response in batches:
                for layer in weights:
                    for w in layer:
                        F.linear(inputs[w.shape[1]][:tokens], w)
                F.linear(head_input[:response], head.weight)
        return time.perf_counter() - started

    replay(torch.float32)  # warm-up: oneDNN primitives for these shapes
    _, scoring = timed(lambda: dict(score_examples(model, tokenizer, items, precision="model")))
    fp32, bf16 = replay(torch.float32), replay(torch.bfloat16)
    print(
        f"\n| loss_floor ({len(items)} real examples, {len(batches)} forwards, {padded:,} padded / {real:,} real "
        f"tokens, {flops / 1e9:,.0f} GFLOP in linear layers) | seconds | GFLOP/s |\n|---|---|---|"
    )
    for label, seconds in (
        ("strict fp32 scoring", scoring),
        ("its linear layers alone, float32", fp32),
        ("its linear layers alone, bfloat16 body", bf16),
    ):
        print(f"| {label} | {seconds:.1f} | {flops / 1e9 / seconds:.1f} |")
    print(
        f"\nexact fp32 speed-up bound: {scoring / fp32:.2f}x on these batches, "
        f"{scoring / (fp32 * real / padded):.2f}x with no padding at all; "
        f"bf16 products alone: {scoring / bf16:.2f}x"
    )


if __name__ == "__main__":
    main()
