"""Read instruction files of every supported layout into canonical conversations.

Two steps, kept apart so that nothing is lost on bad input:

1. :func:`read_items` turns a file into :class:`RawItem` s - one per record, each with its
   position, its verbatim text and either the decoded value or the reason it could not be
   decoded (bad UTF-8, broken JSON line, unreadable file).
2. :func:`to_messages` turns one decoded record of a known layout into a list of
   ``{"role", "content"}`` turns, or raises :class:`RecordError` with a quarantine reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import ROLES, Reason, RecordError

FORMATS = ("json", "jsonl", "parquet")

#: Supported record layouts, in detection order.
LAYOUTS = (
    "messages",  # {"messages": [{"role", "content"}, ...]}
    "conversations",  # LIMA / ShareGPT: {"conversations": [str, ...] | [{"from", "value"}, ...]}
    "dialogsum",  # {"dialogue", "summary"}
    "qa",  # {"question", "answer"}  (GSM8K)
    "alpaca",  # {"instruction", "input"?, "output"}
    "alpaca_response",  # {"instruction", "input"?, "response"}
    "mapped",  # any columns, through a declared FieldMapping
)

#: Prompt put before a DialogSum dialogue (the layout has no instruction of its own).
DIALOGSUM_PROMPT = "Summarize the following dialogue."

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class FieldMapping:
    """Which record fields hold the prompt, the optional input and the response ("mapped")."""

    prompt: str
    response: str
    input: str | None = None

    @classmethod
    def parse(cls, spec: str | dict[str, str] | None) -> FieldMapping | None:
        """From ``"prompt=col,response=col[,input=col]"`` or a dict; ``None`` passes through."""
        if spec is None or isinstance(spec, FieldMapping):
            return spec
        if isinstance(spec, str):
            pairs = [p.split("=", 1) for p in spec.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"mapping: expected 'prompt=COL,response=COL[,input=COL]', got {spec!r}")
            spec = {k.strip(): v.strip() for k, v in pairs}
        unknown = set(spec) - {"prompt", "response", "input"}
        if unknown or "prompt" not in spec or "response" not in spec:
            raise ValueError(f"mapping: keys must be prompt, response and optionally input; got {sorted(spec)}")
        return cls(prompt=spec["prompt"], response=spec["response"], input=spec.get("input"))


@dataclass
class RawItem:
    """One record as read: where it was, its verbatim text, and its value or why it has none."""

    position: int  # 1-based line (jsonl), 0-based item index (json array) or row (parquet)
    raw: str
    value: Any = None
    error: RecordError | None = None


def detect_format(path: Path, head: bytes) -> str:
    """Format from the extension, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if head.startswith(b"PAR1"):
        return "parquet"
    return "json" if head.lstrip()[:1] == b"[" else "jsonl"


def read_items(path: str | Path, fmt: str | None = None) -> Iterator[RawItem]:
    """Yield every record of ``path``. A file that cannot be read as ``fmt`` yields one item
    carrying the whole file text and the reason, so the quarantine keeps it."""
    path = Path(path)
    data = path.read_bytes()
    fmt = fmt or detect_format(path, data[:64])
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
    if fmt == "parquet":
        yield from _read_parquet(data)
    elif fmt == "jsonl":
        yield from _read_jsonl(data)
    else:
        yield from _read_json(data)


def _lossless_text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _read_jsonl(data: bytes) -> Iterator[RawItem]:
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue  # blank lines are separators, not records
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            err = RecordError(Reason.INVALID_UTF8, str(exc))
            yield RawItem(lineno, _lossless_text(line), error=err)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawItem(lineno, text, error=RecordError(Reason.MALFORMED_JSON, str(exc)))
            continue
        yield RawItem(lineno, text, value=value)


def _read_json(data: bytes) -> Iterator[RawItem]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield RawItem(0, _lossless_text(data), error=RecordError(Reason.INVALID_UTF8, str(exc)))
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSON-lines file named .json
            yield from _read_jsonl(data)
            return
        detail = f"not a JSON document: {exc}"
        yield RawItem(0, text, error=RecordError(Reason.UNREADABLE_FILE, detail))
        return
    records = doc if isinstance(doc, list) else [doc]
    for index, value in enumerate(records):
        yield RawItem(index, json.dumps(value, ensure_ascii=False), value=value)


def _read_parquet(data: bytes) -> Iterator[RawItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        detail = f"not a Parquet file: {exc}"
        yield RawItem(0, _lossless_text(data), error=RecordError(Reason.UNREADABLE_FILE, detail))
        return
    for index, value in enumerate(table.to_pylist()):
        yield RawItem(index, json.dumps(value, ensure_ascii=False, default=str), value=value)


def detect_layout(record: Any) -> str | None:
    """The layout a decoded record follows, or ``None``."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "conversations"
    if "dialogue" in record and "summary" in record:
        return "dialogsum"
    if "question" in record and "answer" in record:
        return "qa"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "instruction" in record and "response" in record:
        return "alpaca_response"
    return None


def _text(record: dict, name: str, *, optional: bool = False) -> str:
    if name not in record or record[name] is None:
        if optional:
            return ""
        raise RecordError(Reason.MISSING_FIELD, name)
    value = record[name]
    if not isinstance(value, str):
        raise RecordError(Reason.NON_STRING_FIELD, f"{name} is {type(value).__name__}")
    if not optional and not value.strip():
        raise RecordError(Reason.EMPTY_FIELD, name)
    return value


def _prompt(instruction: str, extra: str) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()


def _turns(raw_turns: Any, field_name: str) -> list[dict[str, str]]:
    if not isinstance(raw_turns, list):
        raise RecordError(Reason.MALFORMED_TURN, f"{field_name} is {type(raw_turns).__name__}")
    if not raw_turns:
        raise RecordError(Reason.EMPTY_CONVERSATION, field_name)
    turns = []
    for i, turn in enumerate(raw_turns):
        if isinstance(turn, str):  # LIMA: plain strings alternating user / assistant
            role, content = ("user", "assistant")[i % 2], turn
        elif isinstance(turn, dict):
            role_key = "role" if "role" in turn else "from"
            content_key = "content" if "content" in turn else "value"
            if role_key not in turn or content_key not in turn:
                raise RecordError(Reason.MALFORMED_TURN, f"turn {i} lacks role/content")
            role = turn[role_key]
            if not isinstance(role, str) or role.lower() not in _SHAREGPT_ROLES:
                raise RecordError(Reason.UNKNOWN_ROLE, f"turn {i} role {role!r}")
            role, content = _SHAREGPT_ROLES[role.lower()], turn[content_key]
        else:
            raise RecordError(Reason.MALFORMED_TURN, f"turn {i} is {type(turn).__name__}")
        if not isinstance(content, str):
            raise RecordError(Reason.NON_STRING_FIELD, f"turn {i} content is {type(content).__name__}")
        if not content.strip():
            raise RecordError(Reason.EMPTY_FIELD, f"turn {i} content")
        turns.append({"role": role, "content": content})
    return turns


def check_conversation(turns: list[dict[str, str]]) -> None:
    """Roles: optional leading system, then user/assistant alternating, ending on assistant."""
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    if any(t["role"] == "system" for t in body):
        raise RecordError(Reason.MISPLACED_SYSTEM, "system turn after the first turn")
    if not body:
        raise RecordError(Reason.EMPTY_CONVERSATION, "only a system turn")
    for i, turn in enumerate(body):
        if turn["role"] not in ROLES:
            raise RecordError(Reason.UNKNOWN_ROLE, turn["role"])
        expected = ("user", "assistant")[i % 2]
        if turn["role"] != expected:
            raise RecordError(Reason.ROLES_NOT_ALTERNATING, f"turn {i} is {turn['role']}, expected {expected}")
    if body[-1]["role"] != "assistant":
        raise RecordError(Reason.NOT_ENDING_ON_ASSISTANT, f"last turn is {body[-1]['role']}")


def consumed_fields(layout: str, mapping: FieldMapping | None = None) -> set[str]:
    """Fields a layout turns into the conversation; the rest of a record is kept as metadata."""
    return {
        "messages": {"messages"},
        "conversations": {"conversations"},
        "dialogsum": {"dialogue", "summary"},
        "qa": {"question", "answer"},
        "alpaca": {"instruction", "input", "output", "response"},
        "alpaca_response": {"instruction", "input", "response"},
        "mapped": {mapping.prompt, mapping.response, mapping.input} - {None} if mapping else set(),
    }[layout]


def to_messages(record: Any, layout: str, mapping: FieldMapping | None = None) -> list[dict[str, str]]:
    """Canonical turns of one record in ``layout``; raises :class:`RecordError` otherwise."""
    if not isinstance(record, dict):
        raise RecordError(Reason.NOT_AN_OBJECT, f"record is {type(record).__name__}")
    if layout == "messages":
        if "messages" not in record:
            raise RecordError(Reason.MISSING_FIELD, "messages")
        turns = _turns(record["messages"], "messages")
    elif layout == "conversations":
        if "conversations" not in record:
            raise RecordError(Reason.MISSING_FIELD, "conversations")
        turns = _turns(record["conversations"], "conversations")
    elif layout == "dialogsum":
        dialogue, summary = _text(record, "dialogue"), _text(record, "summary")
        turns = [
            {"role": "user", "content": f"{DIALOGSUM_PROMPT}\n\n{dialogue.strip()}"},
            {"role": "assistant", "content": summary},
        ]
    elif layout == "qa":
        turns = [
            {"role": "user", "content": _text(record, "question")},
            {"role": "assistant", "content": _text(record, "answer")},
        ]
    elif layout in ("alpaca", "alpaca_response"):
        response_key = "output" if layout == "alpaca" else "response"
        turns = [
            {"role": "user", "content": _prompt(_text(record, "instruction"), _text(record, "input", optional=True))},
            {"role": "assistant", "content": _text(record, response_key)},
        ]
    elif layout == "mapped":
        if mapping is None:
            raise ValueError("layout 'mapped' needs a field mapping (prompt=..., response=...)")
        extra = _text(record, mapping.input, optional=True) if mapping.input else ""
        turns = [
            {"role": "user", "content": _prompt(_text(record, mapping.prompt), extra)},
            {"role": "assistant", "content": _text(record, mapping.response)},
        ]
    else:
        raise ValueError(f"layout: {layout!r} is not one of {LAYOUTS}")
    check_conversation(turns)
    return turns
