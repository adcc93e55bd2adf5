"""Model loading: the real SmolLM2-135M from its GGUF, the tiny test Llama, MiniLM."""

import warnings

import numpy as np
import pytest
import torch

from dsel_assets.core.models import loading
from dsel_assets.core.models.embeddings import encode, load_encoder
from dsel_assets.core.models.loading import (
    _dequantized,
    cache_keyword,
    gguf_cache,
    load_causal_lm,
    load_tokenizer,
    model_hash,
    pick_device,
    resolve,
    returned_cache,
)
from resources.models import MODEL_CACHE_ENV, SelectionModel, apply_cpu_precision, resolve_model


def response_loss(model, tokenizer, question, answer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt + answer, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def test_real_smollm2_loads_offline_and_prefers_the_right_answer():
    spec = resolve("smollm2")
    model, tokenizer = load_causal_lm(spec, device="cpu"), load_tokenizer(spec)
    assert sum(p.numel() for p in model.parameters()) > 100e6
    right = response_loss(model, tokenizer, "What is the capital of France?", "The capital of France is Paris.")
    wrong = response_loss(model, tokenizer, "What is the capital of France?", "The capital of France is Tokyo.")
    assert right < wrong and right < 3.0


@pytest.fixture
def forget_loaded_models():
    """Later tests must not get a model or tokenizer loaded under this test's cache setting."""
    yield
    _dequantized.cache_clear()
    load_tokenizer.cache_clear()


@pytest.mark.usefixtures("forget_loaded_models")
def test_each_load_is_an_independent_copy_and_none_is_kept_in_memory(monkeypatch):
    _dequantized.cache_clear()
    spec = resolve("smollm2")  # the default cache folder, written by the first load
    first = load_causal_lm(spec, device="cpu")
    with torch.no_grad():
        first.model.embed_tokens.weight.zero_()  # what training a loaded copy could do
    second = load_causal_lm(spec, device="cpu")
    assert second.model.embed_tokens.weight.abs().sum() > 0
    assert second.lm_head.weight is second.model.embed_tokens.weight  # tied weights stay tied
    assert _dequantized.cache_info().currsize == 0  # read from the disk cache, not kept


def _fresh_process_load(spec):
    """What a new step process gets: nothing cached in memory."""
    _dequantized.cache_clear()
    load_tokenizer.cache_clear()
    return load_causal_lm(spec, device="cpu"), load_tokenizer(spec)


@pytest.mark.usefixtures("forget_loaded_models")
def test_dequantized_gguf_is_cached_on_disk_and_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_CACHE_ENV, "off")
    uncached = resolve_model("smollm2")
    reference, reference_tokenizer = _fresh_process_load(uncached)  # straight from the GGUF
    assert gguf_cache(uncached) is None
    assert _dequantized.cache_info().currsize == 1  # without a disk cache the dequantized model is kept

    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "cache"))
    spec = resolve_model("smollm2")
    assert spec.cache == tmp_path / "cache"
    _fresh_process_load(spec)  # dequantizes and writes the cache
    folder = gguf_cache(spec)
    assert (folder / "model.safetensors").is_file() and [p.name for p in folder.parent.iterdir()] == [folder.name]
    cached, tokenizer = _fresh_process_load(spec)  # reads it
    expected = reference.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in cached.state_dict().items())
    assert cached.lm_head.weight is cached.model.embed_tokens.weight
    text = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
    assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert tokenizer.pad_token == reference_tokenizer.pad_token


@pytest.mark.usefixtures("forget_loaded_models")
def test_an_unwritable_model_cache_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model, tokenizer = _fresh_process_load(resolve("smollm2", cache=blocker / "cache"))
    assert model.config.vocab_size == len(tokenizer) and list(tmp_path.iterdir()) == [blocker]


def test_tiny_model_shares_the_tokenizer_and_is_seeded():
    spec = resolve("tiny")
    a, b = load_causal_lm(spec, device="cpu"), load_causal_lm(spec, device="cpu")
    assert a.config.vocab_size == len(load_tokenizer(spec)) and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_kv_cache_passed_on_continues_the_sequence_without_a_deprecation():
    """A prefix's returned cache, passed back by the installed transformers' own keyword, gives
    the suffix the logits of one forward over the whole sequence (and no FutureWarning: the old
    keyword is deprecated in transformers 5)."""
    spec = resolve("tiny")
    model = load_causal_lm(spec, device="cpu").eval()
    ids = torch.tensor([load_tokenizer(spec)("a cache carries the prefix over")["input_ids"]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        whole = model(ids).logits
        cache = returned_cache(model(ids[:, :4], use_cache=True))
        rest = model(ids[:, 4:], **{cache_keyword(model): cache}, use_cache=True).logits
    torch.testing.assert_close(rest, whole[:, 4:], rtol=1e-4, atol=1e-5)


def test_model_resource_identity_and_device():
    resource = SelectionModel(model="tiny", device="auto")
    ident = resource.identity()
    assert ident["model"] == "tiny" and len(ident["model_hash"]) == 16
    assert ident["model_hash"] != model_hash(resolve("smollm2"))
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_model_path_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DSEL_ALLOW_HUB", raising=False)
    for resolver in (resolve, resolve_model):
        with pytest.raises(ValueError, match="neither an alias .* nor a local model folder"):
            resolver("/no/such/model/dir")
    monkeypatch.setenv("DSEL_ALLOW_HUB", "1")  # then it is a hub id, which offline loading refuses
    with pytest.raises(OSError):
        load_tokenizer(resolve_model("/no/such/model/dir"))
    with pytest.raises(OSError):
        load_tokenizer(resolve("/no/such/model/dir", allow_hub=True))


def test_minilm_embeddings_are_unit_norm_and_semantic():
    encoder = load_encoder()
    v = encode(encoder, ["How do I bake bread?", "Bread baking instructions", "The stock market fell today."])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_dsel_cpu_bf16_zero_keeps_cpu_work_in_strict_fp32(monkeypatch):
    monkeypatch.setitem(loading._cpu_bf16, "allowed", True)  # restored after the test
    monkeypatch.setenv("DSEL_CPU_BF16", "0")
    apply_cpu_precision()
    assert not loading.fast_bf16("cpu") and loading.fast_bf16("cuda")
    monkeypatch.setenv("DSEL_CPU_BF16", "1")
    apply_cpu_precision()
    assert loading.fast_bf16("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()
