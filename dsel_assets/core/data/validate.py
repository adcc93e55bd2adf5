"""Validate one file into accepted canonical rows and quarantined rows, losing nothing.

Every record read ends up in exactly one of the two lists, so per file
``accepted + quarantined == read`` holds by construction (and is asserted).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .readers import (
    LAYOUTS,
    MAX_FILE_BYTES,
    MAX_RECORD_BYTES,
    FieldMapping,
    RawItem,
    consumed_fields,
    detect_layout,
    read_items,
    to_messages,
)
from .schema import Reason, RecordError, example_id

#: Counts tokens of many conversations at once (the selection model's tokenizer + template).
TokenCounter = Callable[[list[list[dict[str, str]]]], list[int]]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class ValidationResult:
    """Outcome of validating one file."""

    layout: str | None
    accepted: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.accepted) + len(self.quarantined)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(row["reason"] for row in self.quarantined).most_common())


def _quarantine(item: RawItem, error: RecordError) -> dict:
    return {
        "position": item.position,
        "reason": error.reason.value,
        "detail": error.detail,
        "raw": item.raw,
    }


def _meta(record: dict, layout: str, mapping: FieldMapping | None) -> str:
    extra = {k: v for k, v in record.items() if k not in consumed_fields(layout, mapping)}
    return json.dumps(extra, ensure_ascii=False, default=str)


def validate_items(
    items: Iterable[RawItem],
    *,
    layout: str | None = None,
    mapping: FieldMapping | None = None,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
    known_ids: Mapping[str, str] | None = None,
    token_batch: int = 256,
) -> ValidationResult:
    """Turn raw items into canonical rows; every failure becomes a quarantine row.

    ``known_ids`` maps ids already stored (earlier batches) to where they are: a record
    equal to one of them is a duplicate, which also keeps eval and query rows out of the pool
    when those sets are ingested first (decontamination). ``layout`` is detected from the
    first decodable record when not given. An error no check foresaw costs only its record
    (``invalid_record``, the exception in the detail); a ``MemoryError`` still stops the file.
    """
    items = list(items)
    if layout is None and mapping is not None:
        layout = "mapped"
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {LAYOUTS}")
    if layout == "mapped" and mapping is None:
        raise ValueError("layout 'mapped' needs a field mapping (prompt=..., response=...)")
    if layout is None:
        layout = next((lay for it in items if it.error is None and (lay := detect_layout(it.value))), None)
    result = ValidationResult(layout=layout)
    candidates: list[tuple[RawItem, list[dict[str, str]]]] = []
    for item in items:
        error = item.error
        if error is None and layout is None:
            error = RecordError(Reason.UNKNOWN_LAYOUT, "no record matches a known layout; declare a field mapping")
        if error is None:
            try:
                messages = to_messages(item.value, layout, mapping)
                if any(_CONTROL.search(m["content"]) for m in messages):
                    raise RecordError(Reason.CONTROL_CHARACTERS, "content holds control characters")
            except RecordError as exc:
                error = exc
            except MemoryError:
                raise
            except Exception as exc:  # a case no check foresaw: it costs this record, not the file
                error = RecordError(Reason.INVALID_RECORD, f"{type(exc).__name__}: {exc}")
        if error is not None:
            result.quarantined.append(_quarantine(item, error))
        else:
            candidates.append((item, messages))

    token_counts: list[int | None] = [None] * len(candidates)
    if count_tokens is not None:
        for start in range(0, len(candidates), token_batch):
            chunk = [messages for _, messages in candidates[start : start + token_batch]]
            token_counts[start : start + len(chunk)] = count_tokens(chunk)

    seen: dict[str, int] = {}
    for (item, messages), n_tokens in zip(candidates, token_counts, strict=True):
        pool_id = example_id(messages)
        if max_tokens is not None and n_tokens is not None and n_tokens > max_tokens:
            error = RecordError(Reason.OVER_TOKEN_LIMIT, f"{n_tokens} tokens > {max_tokens}")
        elif known_ids and pool_id in known_ids:
            error = RecordError(Reason.DUPLICATE, f"{pool_id} is already stored in {known_ids[pool_id]}")
        elif pool_id in seen:
            error = RecordError(Reason.DUPLICATE, f"{pool_id} repeats position {seen[pool_id]}")
        else:
            error = None
        if error is not None:
            result.quarantined.append(_quarantine(item, error))
            continue
        seen[pool_id] = item.position
        record = item.value
        result.accepted.append(
            {
                "pool_id": pool_id,
                "messages": messages,
                "n_turns": len(messages),
                "n_tokens": n_tokens,
                "position": item.position,
                "raw": item.raw,
                "meta": _meta(record, layout, mapping),
                "record_task": record.get("task") if isinstance(record.get("task"), str) else None,
            }
        )
    result.quarantined.sort(key=lambda row: row["position"])
    assert result.read == len(items), "validation lost rows"
    return result


def validate_file(
    path: str | Path,
    *,
    fmt: str | None = None,
    layout: str | None = None,
    mapping: FieldMapping | str | None = None,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
    known_ids: Mapping[str, str] | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ValidationResult:
    """Read and validate one file (see :func:`validate_items`); the caps are those of
    :func:`~dsel_assets.core.data.readers.read_items`."""
    return validate_items(
        read_items(path, fmt, max_record_bytes=max_record_bytes, max_file_bytes=max_file_bytes),
        layout=layout,
        mapping=FieldMapping.parse(mapping),
        count_tokens=count_tokens,
        max_tokens=max_tokens,
        known_ids=known_ids,
    )
