"""Batches for every model pass: length-sorted, bounded in rows and padded tokens, and halved
when a batch runs out of device memory - so one long example or a smaller GPU costs speed,
not the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..memory import release_memory
from .sft import length_batches

T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or the CPU allocator failing to allocate."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@dataclass
class Batching:
    """At most ``size`` examples and ``max_tokens`` padded tokens per batch. A batch that runs
    out of memory is split in halves and retried, and ``size`` stays halved for the rest of the
    pass; ``on_shrink`` is told each time (a step's log)."""

    size: int = 8
    max_tokens: int | None = None
    on_shrink: Callable[[str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"batch_size: {self.size} must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_batch_tokens: {self.max_tokens} must be at least 1 (or unset)")

    @classmethod
    def of(cls, batching: int | Batching) -> Batching:
        """A :class:`Batching` from an example count (the plain ``batch_size`` callers pass)."""
        return batching if isinstance(batching, Batching) else cls(batching)

    def run(self, lengths: Sequence[int], step: Callable[[list[int]], T]) -> Iterator[tuple[list[int], T]]:
        """``(indices, step(indices))`` for every batch of the examples of ``lengths``; the
        indices of all batches together are each example once."""
        for group in length_batches(lengths, self.size, self.max_tokens):
            pending = [group]
            while pending:
                part = pending.pop(0)
                if len(part) > self.size:  # an earlier batch shrank the size
                    pending[:0] = [part[i : i + self.size] for i in range(0, len(part), self.size)]
                    continue
                try:
                    result = step(part)
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    release_memory()
                    longest = max(lengths[i] for i in part)
                    if len(part) == 1:
                        raise MemoryError(
                            f"out of memory on a single example of {longest} tokens: lower max_length, "
                            "choose a smaller dtype or load_in=4bit|8bit, or use a device with more memory"
                        ) from error
                    self.size = max(1, len(part) // 2)
                    if self.on_shrink is not None:
                        self.on_shrink(
                            f"out of memory on a batch of {len(part)} examples x {longest} tokens; "
                            f"retrying with batches of {self.size}"
                        )
                    pending.insert(0, part)
                    continue
                yield part, result
