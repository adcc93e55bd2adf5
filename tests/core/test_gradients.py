"""Per-example gradients, Adam features and the projection (tiny random Llama, fast)."""

import math

import numpy as np
import pytest
import torch

from dsel_assets.core.models.gradients import PerExampleGradients, adam_features
from dsel_assets.core.models.loading import tiny_llama
from dsel_assets.core.models.lora import LoraSettings, add_lora, lora_parameters
from dsel_assets.core.models.projection import UNIT, BlockProjector
from dsel_assets.core.models.sft import IGNORE, collate, encode_conversation, length_batches, per_example_loss

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "user", "content": "Name three colours, please, in a list."},
        {"role": "assistant", "content": "Red, green and blue are three colours that most people know."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Count to five."},
        {"role": "assistant", "content": "1, 2, 3, 4, 5."},
    ],
]


@pytest.fixture(scope="module")
def model(tokenizer):
    lora = add_lora(tiny_llama(tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0), seed=1)
    # non-zero lora_B so that lora_A gradients are non-zero too
    with torch.no_grad():
        for name, p in lora_parameters(lora):
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return lora.eval()


def test_labels_cover_only_assistant_turns(tokenizer):
    enc = encode_conversation(tokenizer, CONVERSATIONS[2], max_length=512)
    labelled = tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE])
    assert "Hello! How can I help?" in labelled and "1, 2, 3, 4, 5." in labelled
    assert "Count to five" not in labelled and "Hi" not in labelled.replace("Hello", "")
    assert encode_conversation(tokenizer, CONVERSATIONS[1], max_length=20) is None  # truncated away


def test_length_batches_group_similar_lengths():
    lengths = [5, 50, 6, 48, 7, 49]
    batches = length_batches(lengths, max_batch=3)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[48, 49, 50], [5, 6, 7]]
    assert all(len(b) <= 2 for b in length_batches(lengths, max_batch=8, max_tokens=100))


def loop_gradients(model, examples):
    rows = []
    for example in examples:
        model.zero_grad(set_to_none=True)
        per_example_loss(model, collate([example], pad_id=0)).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for _, p in lora_parameters(model)]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_per_example_gradients_equal_the_one_at_a_time_loop(model, tokenizer, side):
    examples = [encode_conversation(tokenizer, c, 512) for c in CONVERSATIONS]
    expected = loop_gradients(model, examples)
    with PerExampleGradients(model) as grads:
        got, losses = grads.compute(collate(examples, pad_id=tokenizer.pad_token_id, padding_side=side))
    assert got.shape == expected.shape == (3, grads.dim)
    assert torch.all(expected.norm(dim=1) > 0)
    rel = (got - expected).norm(dim=1) / expected.norm(dim=1)
    assert rel.max() < 1e-5
    assert losses.shape == (3,)


def test_adam_feature_with_zero_state():
    g = torch.tensor([1e-3, -2.0, 0.5, 0.0])
    zero = torch.zeros_like(g)
    expected = 0.1 * g / torch.sqrt(0.001 * g**2 + 1e-8)
    torch.testing.assert_close(adam_features(g, zero, zero), expected)
    m, v = torch.tensor([0.1, 0.2, -0.3, 0.0]), torch.tensor([0.01, 0.04, 0.09, 0.0])
    hand_m, hand_v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    torch.testing.assert_close(adam_features(g, m, v), hand_m / torch.sqrt(hand_v + 1e-8))
    torch.testing.assert_close(adam_features(g, m, v, textbook=True), hand_m / (torch.sqrt(hand_v) + 1e-8))


def test_projection_is_the_same_matrix_for_any_block_size():
    x = torch.randn(5, 3 * UNIT + 17, generator=torch.Generator().manual_seed(0))
    a = BlockProjector(x.shape[1], 64, seed=3, block_units=1).project(x)
    b = BlockProjector(x.shape[1], 64, seed=3, block_units=7).project(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c = BlockProjector(x.shape[1], 64, seed=4).project(x)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projection_preserves_inner_products_within_the_jl_bound(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2 * UNIT, generator=gen)
    x = x / x.norm(dim=1, keepdim=True)
    d = 2048
    y = BlockProjector(x.shape[1], d, seed=0, kind=kind).project(x)
    err = (y @ y.T - x @ x.T).abs().max().item()
    assert err < 6 / math.sqrt(d)  # JL: deviation O(1/sqrt(d)); generous constant


def test_projection_is_deterministic_across_processes():
    import subprocess
    import sys

    code = (
        "import torch; from dsel_assets.core.models.projection import BlockProjector as B;"
        "print(B(3000, 8, seed=9).unit(2)[:2, :4].tolist())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    here = str(BlockProjector(3000, 8, seed=9).unit(2)[:2, :4].tolist())
    assert outs == {here + "\n"}


def synthetic_items(n=12):
    from dsel_assets.core.data.synthetic import generate

    pool = generate(seed=0, per_capability=n // 6 + 1).pool[:n]
    from dsel_assets.core.data.schema import example_id

    return [(example_id(r["messages"]), r["messages"]) for r in pool]


def test_warmup_saves_adapter_adam_state_by_name_and_mean_lr(tokenizer, tmp_path):
    from safetensors.torch import load_file

    from dsel_assets.core.models.features import FeatureConfig, gradient_features
    from dsel_assets.core.models.warmup import WarmupConfig, load_checkpoint, read_manifest, train_warmup

    items = synthetic_items(12)
    encoded = [encode_conversation(tokenizer, m, 128) for _, m in items]
    config = WarmupConfig(epochs=2, batch_size=4, lr=1e-3, lora=LoraSettings(r=4, alpha=8))
    checkpoints = train_warmup(
        tiny_llama(tokenizer), encoded, config, tmp_path / "w", tokenizer.pad_token_id, log=lambda _: None
    )
    assert [c.epoch for c in checkpoints] == [1, 2]
    assert checkpoints[0].lr_mean > checkpoints[1].lr_mean > 0  # linear decay
    manifest = read_manifest(tmp_path / "w")
    assert len(manifest["curve"]) == 2 * 3 and manifest["config"]["lora"]["r"] == 4
    state = load_file(str(checkpoints[1].path / "optimizer.safetensors"))
    names = [k.split("/", 1)[1] for k in state if k.startswith("exp_avg/")]
    assert names and all("lora_" in n for n in names) and len(state) == 2 * len(names)

    model, adam = load_checkpoint(tiny_llama(tokenizer), checkpoints[1].path)
    assert set(adam["exp_avg"]) == {n for n, _ in lora_parameters(model)}
    excluded = []
    cfg = FeatureConfig(dim=32, chunk=5, batch_size=3, max_length=128)
    chunks = list(gradient_features(model, tokenizer, items, cfg, adam, excluded=excluded))
    ids = [i for c in chunks for i in c.ids]
    assert sorted(ids) == sorted(i for i, _ in items) and not excluded
    feats = np.concatenate([c.features for c in chunks]).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=2e-3)
    # chunking does not change a feature
    again = {
        i: f
        for c in gradient_features(model, tokenizer, items, FeatureConfig(dim=32, chunk=12, max_length=128), adam)
        for i, f in zip(c.ids, c.features, strict=True)
    }
    for c in chunks:
        for i, f in zip(c.ids, c.features, strict=True):
            np.testing.assert_allclose(f.astype(np.float32), again[i].astype(np.float32), atol=2e-3)
    # truncation that leaves no response token is excluded with a reason
    excluded = []
    list(gradient_features(model, tokenizer, items[:2], FeatureConfig(dim=8, max_length=8), adam, excluded=excluded))
    assert len(excluded) == 2 and "max_length=8" in excluded[0][1]


def test_streaming_influence_equals_the_in_memory_product():
    from dsel_assets.core.influence import checkpoint_weights, influence_matrix, less_task_scores

    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    pool = {c: unit(rng.normal(size=(50, 16))) for c in (1, 2)}
    queries = {c: unit(rng.normal(size=(4, 16))) for c in (1, 2)}
    weights = checkpoint_weights({1: 3e-4, 2: 1e-4})
    assert weights == pytest.approx({1: 0.75, 2: 0.25})
    ids = [f"p{i}" for i in range(50)]
    batches = [(c, ids[s : s + 7], pool[c][s : s + 7]) for c in (2, 1) for s in range(0, 50, 7)]
    streamed = influence_matrix(ids, queries, batches, weights)
    expected = 0.75 * pool[1] @ queries[1].T + 0.25 * pool[2] @ queries[2].T
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(streamed) <= 1 + 1e-6)
    with pytest.raises(ValueError, match="rows per checkpoint"):
        influence_matrix(ids, queries, batches[:-1], weights)
    # LESS: mean within subtask, max over subtasks
    s = np.array([[0.1, 0.3, 0.9], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(less_task_scores(s, ["a", "a", "b"]), [0.9, 0.5])
    np.testing.assert_allclose(less_task_scores(s, ["a", "a", "a"]), s.mean(axis=1))


def test_bf16_projection_matches_float32_in_cosine():
    x = torch.randn(8, 4 * UNIT, generator=torch.Generator().manual_seed(2))
    a = BlockProjector(x.shape[1], 256, seed=1).project(x)
    b = BlockProjector(x.shape[1], 256, seed=1, dtype="bfloat16").project(x)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


def test_less_scores_group_queries_by_task_then_subtask():
    """By hand: task a has subtasks x (two queries) and y; b's query has no subtask."""
    from dsel_assets.core.influence import aggregate_less_scores

    scores = np.array([[0.2, 0.4, 0.1, 0.9], [0.5, 0.1, 0.6, -0.3]])
    by_task = aggregate_less_scores(scores, ["a", "a", "a", "b"], ["x", "x", "y", None])
    assert list(by_task) == ["a", "b"]
    # a: max(mean(0.2, 0.4), 0.1) = 0.3 and max(mean(0.5, 0.1), 0.6) = 0.6
    np.testing.assert_allclose(by_task["a"], [0.3, 0.6])
    np.testing.assert_allclose(by_task["b"], [0.9, -0.3])
    with pytest.raises(ValueError, match="4 tasks, 3 subtasks"):
        aggregate_less_scores(scores, ["a", "a", "a", "b"], ["x", "x", "y"])
