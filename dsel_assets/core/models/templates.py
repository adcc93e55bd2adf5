"""Chat rendering and token counting with the selection model's template, and the Alpaca
prompt that Cherry_LLM's reference scoring (``--prompt alpaca``) wraps each instruction in."""

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


#: Cherry_LLM's Alpaca prompt for a record without an ``input`` field. dsel merges an Alpaca
#: ``input`` into the user turn at ingest, so every record takes this form.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
#: What Cherry_LLM puts before the answer when it scores the answer without the instruction.
ALPACA_RESPONSE_HEADER = "### Response:"


def render_alpaca(instruction: str) -> str:
    """The Alpaca prompt around ``instruction``; the answer follows it with no separator."""
    return ALPACA_PROMPT.format(instruction=instruction)


def token_counter(tokenizer: PreTrainedTokenizerBase):
    """A batch token counter for :func:`dsel_assets.core.data.validate.validate_items`."""

    def count(conversations: list[list[dict[str, str]]]) -> list[int]:
        texts = [render_chat(tokenizer, messages) for messages in conversations]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    return count


def response_token_counts(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]]) -> list[int]:
    """Tokens in the assistant turns of each conversation: their contents tokenized without a
    template or special tokens, summed over the turns (Long Is More ranks by this length)."""
    turns = [[m["content"] for m in messages if m["role"] == "assistant"] for messages in conversations]
    flat = [text for texts in turns for text in texts]
    lengths = iter(len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    return [sum(next(lengths) for _ in texts) for texts in turns]
