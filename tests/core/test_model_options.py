"""Options for large models, on CPU with the tiny model: out-of-memory batches halve and retry
(with a simulated device memory: a pre-hook raising torch's OutOfMemoryError past a token
budget), token-budget batching, dtype / attention / quantisation options and their errors,
gradient checkpointing, and the dtype / quantisation pinned in the state home."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsel_assets.core.data.synthetic import generate
from dsel_assets.core.models.batching import Batching
from dsel_assets.core.models.features import FeatureConfig, gradient_features
from dsel_assets.core.models.loading import check_model_options, load_causal_lm, resolve, tiny_llama
from dsel_assets.core.models.lora import LoraSettings, add_lora
from dsel_assets.core.models.model_embeddings import model_embeddings
from dsel_assets.core.models.scoring import score_examples
from tests.helpers import strict_cpu_fp32


@pytest.fixture()
def items():
    return [(str(i), r["messages"]) for i, r in enumerate(generate(seed=5, per_capability=2).pool)]


class DeviceMemory:
    """A forward pre-hook that fails like a full GPU when a batch holds more than ``tokens``
    padded tokens, recording the batch shapes it let through."""

    def __init__(self, model, tokens: int):
        self.tokens, self.shapes = tokens, []
        body = next(m for m in model.modules() if type(m).__name__ == "LlamaModel")
        self.handle = body.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        rows, width = kwargs["input_ids"].shape
        if rows * width > self.tokens:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {rows} x {width} tokens)")
        self.shapes.append((rows, width))

    def remove(self):
        self.handle.remove()


def test_batching_halves_on_out_of_memory_and_covers_every_example_once():
    lengths = [5, 9, 3, 9, 7, 2, 8, 1, 6, 4, 10]
    told = []

    def step(group):
        if len(group) > 2:
            raise torch.OutOfMemoryError("simulated")
        return [lengths[i] for i in group]

    batching = Batching(8, on_shrink=told.append)
    seen = [(group, result) for group, result in batching.run(lengths, step)]
    covered = sorted(i for group, _ in seen for i in group)
    assert covered == list(range(len(lengths)))
    assert all(result == [lengths[i] for i in group] for group, result in seen)
    assert all(len(group) <= 2 for group, _ in seen)
    # 8 -> 4 -> 2, then it stays at 2: two messages only, each naming the new size
    assert batching.size == 2 and len(told) == 2
    assert "batch of 8" in told[0] and "batches of 4" in told[0] and "batches of 2" in told[1]


def test_batching_token_budget_and_errors():
    lengths = [100, 90, 80, 30, 20, 10, 10, 10, 10, 10]
    groups = [group for group, _ in Batching(8, max_tokens=100).run(lengths, lambda g: None)]
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) == 1 or max(lengths[i] for i in group) * len(group) <= 100
    with pytest.raises(MemoryError, match="single example of 100 tokens"):
        list(Batching(1).run([100], lambda g: (_ for _ in ()).throw(torch.OutOfMemoryError("x"))))
    with pytest.raises(ValueError, match="boom"):  # other errors are not swallowed as memory errors
        list(Batching(4).run([3, 3], lambda g: (_ for _ in ()).throw(ValueError("boom"))))
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Batching(4, max_tokens=0)


def test_scores_embeddings_and_features_survive_out_of_memory_unchanged(tokenizer, items):
    model = add_lora(tiny_llama(tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0), seed=1)
    reference_scores = dict(score_examples(model, tokenizer, items, batch_size=1))
    reference_embeddings = model_embeddings(model, tokenizer, [m for _, m in items], batch_size=1)
    config = FeatureConfig(dim=32, chunk=16, batch_size=8, max_batch_tokens=100_000, max_length=128)
    reference_features = np.concatenate([c.features for c in gradient_features(model, tokenizer, items, config)])

    longest = max(len(tokenizer.apply_chat_template(m, tokenize=False)) for _, m in items)  # chars >= tokens
    memory = DeviceMemory(model, tokens=2 * longest)
    try:
        told = []
        scores = dict(score_examples(model, tokenizer, items, batch_size=Batching(16, on_shrink=told.append)))
        assert told and all("out of memory on a batch" in t for t in told)
        assert max(rows for rows, _ in memory.shapes) < 16  # the large batches never ran
        for key, value in reference_scores.items():
            assert scores[key].loss_conditioned == pytest.approx(value.loss_conditioned, rel=1e-4)
            assert scores[key].ifd_loss_ratio == pytest.approx(value.ifd_loss_ratio, rel=1e-4)
        told.clear()
        embedded = model_embeddings(
            model, tokenizer, [m for _, m in items], batch_size=Batching(16, on_shrink=told.append)
        )
        assert told
        np.testing.assert_allclose(embedded, reference_embeddings, atol=1e-5)
        told.clear()
        chunks = list(gradient_features(model, tokenizer, items, config, on_shrink=told.append))
        assert told
        np.testing.assert_allclose(np.concatenate([c.features for c in chunks]), reference_features, atol=2e-3)
    finally:
        memory.remove()


def test_training_splits_a_batch_that_runs_out_of_memory_into_micro_batches(tokenizer, monkeypatch):
    from dsel_assets.core.models.lora import lora_parameters
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.models.warmup import WarmupConfig, train_lora

    conversations = [r["messages"] for r in generate(seed=4, per_capability=2).pool]
    encoded = [e for e in (encode_conversation(tokenizer, m, 96) for m in conversations) if e is not None]
    config = WarmupConfig(epochs=1, batch_size=8, lr=1e-3, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    strict_cpu_fp32(monkeypatch)  # strict fp32: bf16 rounding differs between batch shapes
    reference, reference_curve = train_lora(tiny_llama(tokenizer), encoded, config, tokenizer.pad_token_id, print)
    model, told = tiny_llama(tokenizer), []
    memory = DeviceMemory(model, tokens=2 * 96)
    trained, curve = train_lora(model, encoded, config, tokenizer.pad_token_id, told.append)
    memory.remove()
    assert any("micro-batches of" in t for t in told)
    assert max(rows for rows, _ in memory.shapes) <= 2
    # the same optimisation: each micro-batch's mean loss counts by its share of the batch
    np.testing.assert_allclose([c["loss"] for c in curve], [c["loss"] for c in reference_curve], rtol=1e-4)
    for (_, got), (_, want) in zip(lora_parameters(trained), lora_parameters(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fine_tuning_and_warmup_keep_each_forward_within_the_token_budget(tokenizer, monkeypatch, tmp_path):
    from dsel_assets.core.models.finetune import FinetuneConfig, finetune
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.models.warmup import WarmupConfig, train_warmup

    conversations = [r["messages"] for r in generate(seed=6, per_capability=2).pool]
    encoded = [e for e in (encode_conversation(tokenizer, m, 64) for m in conversations) if e is not None]
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    strict_cpu_fp32(monkeypatch)
    budget = 2 * 64
    for train, config in (
        (finetune, FinetuneConfig(epochs=1, batch_size=8, lr=1e-3, lora=lora)),
        (train_warmup, WarmupConfig(epochs=1, batch_size=8, lr=1e-3, lora=lora)),
    ):
        whole, capped = tmp_path / f"{train.__name__}-whole", tmp_path / f"{train.__name__}-capped"
        train(tiny_llama(tokenizer), encoded, config, whole, tokenizer.pad_token_id)
        model = tiny_llama(tokenizer)
        seen = DeviceMemory(model, tokens=10**9)  # records every forward's shape, never fails
        train(model, encoded, config, capped, tokenizer.pad_token_id, max_tokens=budget)
        seen.remove()
        assert seen.shapes and max(rows * width for rows, width in seen.shapes) <= budget
        assert any(rows * width > budget for rows, width in _batch_shapes(encoded, config.batch_size))
        np.testing.assert_allclose(_losses(capped), _losses(whole), rtol=1e-4)  # the same updates


def _batch_shapes(encoded, batch_size: int) -> list[tuple[int, int]]:
    """(rows, padded width) of the uncapped training batches: some exceed the budget."""
    from dsel_assets.core.models.sft import length_batches

    lengths = [len(e.input_ids) for e in encoded]
    return [(len(g), max(lengths[i] for i in g)) for g in length_batches(lengths, batch_size)]


def _losses(folder) -> list[float]:
    """The loss curve a training run wrote to its folder's manifest."""
    return [point["loss"] for point in json.loads((folder / "manifest.json").read_text())["curve"]]


def test_model_options_load_and_refuse_clearly(tokenizer):
    spec = resolve("tiny")
    half = load_causal_lm(spec, "cpu", dtype="float16", attention="eager")
    assert next(half.parameters()).dtype == torch.float16
    assert half.config._attn_implementation == "eager"
    assert load_causal_lm(spec, "cpu").config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match=r"load_in: '4bit' quantises through bitsandbytes on CUDA only.*cpu"):
        check_model_options("cpu", load_in="4bit")
    with pytest.raises(ValueError, match=r"load_in: '2bit' is not one of \['none', '4bit', '8bit'\]"):
        check_model_options("cpu", load_in="2bit")
    with pytest.raises(ValueError, match="attention: 'flash_attention_2' runs on CUDA only"):
        check_model_options("cpu", attention="flash_attention_2")
    with pytest.raises(ValueError, match=r"dtype: 'fp8' is not one of"):
        load_causal_lm(spec, "cpu", dtype="fp8")


def test_gradient_checkpointing_keeps_less_and_trains_the_same(tokenizer):
    from dsel_assets.core.models.lora import lora_parameters
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.models.warmup import WarmupConfig, train_lora
    from resources.models import SelectionModel

    conversations = [r["messages"] for r in generate(seed=2, per_capability=2).pool]
    encoded = [e for e in (encode_conversation(tokenizer, m, 128) for m in conversations) if e is not None]
    config = WarmupConfig(epochs=1, batch_size=4, lr=1e-3)
    curves, kept, weights = {}, {}, {}
    for checkpointing in (False, True):
        model, _ = SelectionModel(model="tiny", device="cpu", gradient_checkpointing=checkpointing).load()
        assert model.is_activation_checkpointing == checkpointing
        peft = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
        peft.train()
        saved = [0]

        def pack(tensor, saved=saved):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            hidden = model.model(input_ids=torch.randint(0, 100, (2, 64))).last_hidden_state
        hidden.sum().backward()  # the checkpointed layers run again here to form their gradients
        kept[checkpointing] = saved[0]
        model, _ = SelectionModel(model="tiny", device="cpu", gradient_checkpointing=checkpointing).load()
        trained, curve = train_lora(model, encoded, config, tokenizer.pad_token_id, log=lambda _: None)
        curves[checkpointing] = [s["loss"] for s in curve]
        weights[checkpointing] = torch.cat([p.detach().flatten() for _, p in lora_parameters(trained)])
    assert kept[True] < kept[False] / 4  # only each layer's input is kept for the backward pass
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-4)
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-4, atol=1e-6)


def test_dtype_and_quantisation_are_pinned_and_runtime_options_are_not(home, monkeypatch):
    from resources.settings import SettingsConflict, resolve_settings, runtime_options

    settings, _ = resolve_settings(home, {"dtype": "float16"})
    assert (settings.dtype, settings.load_in) == ("float16", "none")
    with pytest.raises(SettingsConflict, match="dtype: the state home .* dtype='float16'.*--dtype"):
        resolve_settings(home, {"dtype": "bfloat16"})
    monkeypatch.setenv("DSEL_LOAD_IN", "8bit")
    with pytest.raises(SettingsConflict, match="load_in"):
        resolve_settings(home, {})
    monkeypatch.delenv("DSEL_LOAD_IN")
    monkeypatch.setenv("DSEL_MAX_BATCH_TOKENS", "2048")
    monkeypatch.setenv("DSEL_GRADIENT_CHECKPOINTING", "1")
    assert runtime_options({"attention": "eager"}) == {
        "attention": "eager",
        "max_batch_tokens": 2048,
        "gradient_checkpointing": True,
    }
    from resources import build_resources

    capped = build_resources(home, model="tiny", model_options=runtime_options())
    assert capped["selection_model"].max_batch_tokens == capped["grad_settings"].max_batch_tokens == 2048
    monkeypatch.delenv("DSEL_GRADIENT_CHECKPOINTING")
    assert build_resources(home, model="tiny")["selection_model"].gradient_checkpointing  # on by default
    off = runtime_options({"gradient_checkpointing": False})  # --no-gradient-checkpointing
    assert not build_resources(home, model="tiny", model_options=off)["selection_model"].gradient_checkpointing
    from dsel_assets.app.cli import parser

    assert parser().parse_args(["grads", "--no-gradient-checkpointing"]).gradient_checkpointing is False
    monkeypatch.setenv("DSEL_MAX_BATCH_TOKENS", "lots")
    with pytest.raises(ValueError, match="DSEL_MAX_BATCH_TOKENS: 'lots'"):
        runtime_options()


def test_cli_refuses_quantisation_on_cpu_without_a_traceback(home, capsys):
    from dsel_assets.app.cli import main

    code = main(["score", "loss", "--model", "tiny", "--device", "cpu", "--load-in", "4bit"])
    err = capsys.readouterr().err
    assert code != 0
    assert "load_in: '4bit' quantises through bitsandbytes on CUDA only" in err
    assert "Traceback" not in err
    settings = home.root / "settings.json"
    assert not settings.exists() or "4bit" not in settings.read_text()  # nothing was pinned


def test_the_vocabulary_projection_in_chunks_gives_the_same_losses_and_gradients(tokenizer, monkeypatch):
    from dsel_assets.core.models import sft
    from dsel_assets.core.models.lora import lora_parameters
    from dsel_assets.core.models.sft import collate, encode_conversation, per_example_loss

    strict_cpu_fp32(monkeypatch)
    conversations = [r["messages"] for r in generate(seed=6, per_capability=1).pool]
    batch = collate([encode_conversation(tokenizer, m, 128) for m in conversations], tokenizer.pad_token_id)
    model = add_lora(tiny_llama(tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0), seed=2)
    results = []
    for tokens in (100_000, 7):  # whole, then 7 response tokens per projection
        monkeypatch.setattr(sft, "HEAD_TOKENS", tokens)
        model.zero_grad(set_to_none=True)
        losses = per_example_loss(model, batch)
        losses.sum().backward()
        results.append((losses.detach(), [p.grad.clone() for _, p in lora_parameters(model)]))
    (whole, whole_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    for got, want in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    scores = dict(score_examples(model, tokenizer, [(str(i), m) for i, m in enumerate(conversations)]))
    monkeypatch.setattr(sft, "HEAD_TOKENS", 100_000)
    from dsel_assets.core.models import scoring

    monkeypatch.setattr(scoring, "HEAD_TOKENS", 5)
    for key, value in dict(
        score_examples(model, tokenizer, [(str(i), m) for i, m in enumerate(conversations)])
    ).items():
        assert value.mean_entropy == pytest.approx(scores[key].mean_entropy, rel=1e-5)
        assert value.min_margin == pytest.approx(scores[key].min_margin, abs=1e-6)
