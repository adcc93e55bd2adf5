"""Chat rendering and token counting with the selection model's template."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool = False
) -> str:
    """The conversation as the model sees it: its chat template, else ``role: content`` lines;
    ``generation_prompt`` appends the assistant header (the point where a reply starts)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if generation_prompt else "")


def token_counter(tokenizer: PreTrainedTokenizerBase):
    """A batch token counter for :func:`dsel_assets.core.data.validate.validate_items`."""

    def count(conversations: list[list[dict[str, str]]]) -> list[int]:
        texts = [render_chat(tokenizer, messages) for messages in conversations]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    return count
