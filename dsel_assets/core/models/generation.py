"""Greedy generation in length-bucketed, left-padded batches (evaluation answers, uncertainty
on the model's own replies)."""

from __future__ import annotations

from collections.abc import Sequence

from .batching import Batching
from .loading import bf16_autocast


def greedy_generate(
    model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int | Batching
) -> list[list[int]]:
    """Per prompt (token ids), the greedy continuation up to (not including) the first
    end-of-sequence token. Left padding puts every reply right after its prompt; similar
    lengths share a batch (``batch_size``: prompts per call, or a :class:`~.batching.Batching`);
    bf16 autocast on CUDA."""
    import torch

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    replies: list[list[int]] = [[] for _ in prompts]

    def generate(group):
        width = max(len(prompts[i]) for i in group)
        ids = torch.full((len(group), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(group):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        with torch.no_grad(), bf16_autocast(device):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        return out[:, width:].tolist()

    for group, outs in Batching.of(batch_size).run([len(p) for p in prompts], generate):
        for i, reply in zip(group, outs, strict=True):
            replies[i] = reply[: reply.index(eos)] if eos in reply else reply
    return replies
