"""Read instruction files of every supported layout into canonical conversations.

Two steps, kept apart so that nothing is lost on bad input:

1. :func:`read_items` streams a file into :class:`RawItem` s - one per record, each with its
   position, its verbatim text and either the decoded value or the reason it could not be
   decoded (bad UTF-8, broken JSON, too deep, too large a number or record, lone surrogate,
   unreadable or too large a file). A bad record never takes its neighbours with it.
2. :func:`to_messages` turns one decoded record of a known layout into a list of
   ``{"role", "content"}`` turns, or raises :class:`RecordError` with a quarantine reason.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from .schema import ROLES, Reason, RecordError

FORMATS = ("json", "jsonl", "parquet", "arrow")
#: The first bytes of an Arrow IPC file in the random-access format (the stream format has none).
ARROW_FILE_MAGIC = b"ARROW1"

#: Default caps, checked before anything is decoded or tokenized (a 50 MB line once took 95 s
#: and 9 GB to reject). A record over the first or a file over the second is quarantined.
MAX_RECORD_BYTES = 1_000_000
MAX_FILE_BYTES = 2 * 1024**3
#: Containers nested deeper than this are quarantined: recursive code downstream would crash.
MAX_DEPTH = 100
#: How much of an oversized record, an unreadable file or a broken stream's rest the raw text keeps.
RAW_PREFIX_BYTES = 64 * 1024
#: Bytes read at a time; also how far back a broken JSON stream's raw text may start. Reads
#: within one long JSON record grow up to MAX_READ_CHUNK: ijson rescans an unfinished string at
#: every read, so fixed reads would make a long string quadratic.
READ_CHUNK = 4096
MAX_READ_CHUNK = 16 * 1024**2
BOM = codecs.BOM_UTF8

# The pure-Python ijson backend: the C one (yajl2_c) silently turns a lone high-surrogate escape
# into "?" and fails on the low-surrogate escapes that _EscapeUndecodableBytes writes.
_IJSON = ijson.get_backend("python")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, decoded with "surrogateescape"
_BYTE_AFTER_BACKSLASHES = re.compile(r"(?<!\\)(\\*)([\udc80-\udcff])")

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
    """Format from the extension, else from the first bytes (a byte-order mark is skipped)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".arrow" or head.startswith(ARROW_FILE_MAGIC):
        return "arrow"
    if head.startswith(b"PAR1"):
        return "parquet"
    return "json" if head.removeprefix(BOM).lstrip()[:1] == b"[" else "jsonl"


def read_items(
    path: str | Path,
    fmt: str | None = None,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Iterator[RawItem]:
    """Yield every record of ``path``, streaming: one bad record yields one item with its reason
    and the records around it still come through.

    A file over ``max_file_bytes`` yields one ``file_too_large`` item and a record over
    ``max_record_bytes`` one ``record_too_large`` item, neither decoded. Their raw text, and that
    of a file that cannot be read at all, is cut to its first :data:`RAW_PREFIX_BYTES` with a
    note of the bytes left out: nothing is lost, as the raw store keeps the whole file."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        fmt = fmt or detect_format(path, f.read(64))
        if fmt not in FORMATS:
            raise ValueError(f"format: {fmt!r} is not one of {FORMATS}")
        f.seek(0)
        if size > max_file_bytes:
            yield _whole_file(f, size, 0, Reason.FILE_TOO_LARGE, f"{size} bytes > max_file_bytes {max_file_bytes}")
        elif fmt == "parquet":
            yield from _read_parquet(f, size, max_record_bytes)
        elif fmt == "arrow":
            yield from _read_arrow(f, size, max_record_bytes)
        else:
            if f.read(len(BOM)) != BOM:
                f.seek(0)
            if _reads_as_lines(f, fmt, max_record_bytes):
                yield from _read_jsonl(f, max_record_bytes)
            else:
                yield from _read_json(f, max_record_bytes)


def _reads_as_lines(f: BinaryIO, fmt: str, max_record_bytes: int) -> bool:
    """Whether a JSON(-lines) file is JSON lines, whatever its name says, judged on its first
    lines: a ``.json`` file whose first line is a whole JSON value with more lines after it is
    JSON lines; a ``.jsonl`` file that starts with ``[`` and whose first line is not a whole value
    is a (pretty-printed) JSON array. Leaves the file position where it was."""
    start = f.tell()
    lines = (line for line in iter(lambda: f.readline(max_record_bytes + 1), b"") if line.strip())
    first, second = next(lines, b""), next(lines, b"")
    f.seek(start)
    if fmt == "jsonl":
        return not (first.lstrip()[:1] == b"[" and _whole_value(first) is False)
    return bool(second) and _whole_value(first) is not False and _whole_value(second) is not False


def _whole_value(line: bytes) -> bool | None:
    """True: ``line`` is one JSON value; False: a fragment of one; None: cannot tell (not UTF-8,
    too deep, too long a number)."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    except (ValueError, RecursionError):
        return None
    return True


def _lossless_text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _prefix_text(data: bytes, size: int) -> str:
    """Lossless text of the first :data:`RAW_PREFIX_BYTES` of ``data``, a record or file of
    ``size`` bytes, with a note of how many bytes were left out."""
    kept = data[:RAW_PREFIX_BYTES]
    text = _lossless_text(kept)
    if size > len(kept):
        text += f"\n[... {size - len(kept)} more bytes not kept here; the raw store keeps the whole file]"
    return text


def _whole_file(f: BinaryIO, size: int, position: int, reason: Reason, detail: str) -> RawItem:
    """One item for the file as a whole (its raw text a prefix of the file)."""
    f.seek(0)
    return RawItem(position, _prefix_text(f.read(RAW_PREFIX_BYTES), size), error=RecordError(reason, detail))


def _storable_text(text: str) -> str:
    """``text`` made encodable as UTF-8 for the quarantine table: bytes that were not UTF-8
    (surrogate escapes) are shown as ``\\xNN``, other lone surrogates as ``\\uNNNN``."""
    if not _SURROGATE.search(text):
        return text
    try:
        return _lossless_text(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _value_problem(value: Any, undecodable_bytes: bool = False) -> RecordError | None:
    """Why a decoded record cannot be used as it is: nested deeper than :data:`MAX_DEPTH`
    (recursive code downstream would crash on it) or a string or key that is not valid Unicode,
    i.e. holds a lone surrogate (tokenizers and UTF-8 writers fail on it). ``undecodable_bytes``:
    the record comes from a stream where non-UTF-8 bytes were turned into surrogate escapes."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                if undecodable_bytes and _ESCAPED_BYTE.search(node):
                    return RecordError(Reason.INVALID_UTF8, "a string holds bytes that are not UTF-8")
                return RecordError(Reason.INVALID_UNICODE, f"lone surrogate in {_storable_text(node)[:80]!r}")
        elif isinstance(node, (dict, list)):
            if depth == MAX_DEPTH:
                return RecordError(Reason.TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, dict):
                stack.extend((key, depth) for key in node)
                node = node.values()
            stack.extend((child, depth + 1) for child in node)
    return None


def _decoded(position: int, raw: str, value: Any, undecodable_bytes: bool = False) -> RawItem:
    """An item for a decoded record, or for why it cannot be used (see :func:`_value_problem`).
    The record's text ``raw`` tells when there is nothing to look for: no surrogate, no ``\\u``
    escape and fewer brackets than :data:`MAX_DEPTH`."""
    if "\\u" in raw or _SURROGATE.search(raw) or raw.count("[") + raw.count("{") > MAX_DEPTH:
        error = _value_problem(value, undecodable_bytes)
        if error is not None:
            return RawItem(position, _storable_text(raw), error=error)
    return RawItem(position, raw, value=value)


def _too_large(position: int, data: bytes, size: int, max_record_bytes: int) -> RawItem:
    detail = f"{size} bytes > max_record_bytes {max_record_bytes}"
    return RawItem(position, _prefix_text(data, size), error=RecordError(Reason.RECORD_TOO_LARGE, detail))


def _number_too_large(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Python's refusal to convert an integer literal of too many digits."""
    return isinstance(exc, ValueError) and "integer string conversion" in str(exc)


def _read_jsonl(f: BinaryIO, max_record_bytes: int) -> Iterator[RawItem]:
    for lineno, line, size in _lines(f, max_record_bytes):
        if not line.strip():
            continue  # blank lines are separators, not records
        if size > max_record_bytes:
            yield _too_large(lineno, line, size, max_record_bytes)
        else:
            yield _decode_line(lineno, line)


def _lines(f: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes, int]]:
    """(1-based number, bytes without the line end, size in bytes) of each line. A line over
    ``max_bytes`` comes cut after ``max_bytes + 1`` bytes; its rest is skipped as read, never held."""
    for lineno in itertools.count(1):
        line = f.readline(max_bytes + 1)
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= max_bytes:
            line = line.removesuffix(b"\n").rstrip(b"\r")
            yield lineno, line, len(line)
            continue
        size = len(line)
        while rest := f.readline(max_bytes + 1):
            size += len(rest.removesuffix(b"\n"))
            if rest.endswith(b"\n"):
                break
        yield lineno, line, size


def _decode_line(lineno: int, line: bytes) -> RawItem:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawItem(lineno, _lossless_text(line), error=RecordError(Reason.INVALID_UTF8, str(exc)))
    try:
        value = json.loads(text)
    except RecursionError:
        error = RecordError(Reason.TOO_DEEP, "nested too deep to parse")
    except ValueError as exc:  # JSONDecodeError, or an integer literal of too many digits
        error = RecordError(Reason.NUMBER_TOO_LARGE if _number_too_large(exc) else Reason.MALFORMED_JSON, str(exc))
    else:
        return _decoded(lineno, text, value)
    return RawItem(lineno, text, error=error)


class _EscapeUndecodableBytes:
    """Turns a byte stream into valid UTF-8 for the JSON parser: each byte that is not UTF-8
    becomes the JSON escape of its surrogate-escape code point (``\\xff`` -> ``\\udcff``), so the
    parser reads on and only the record holding it is quarantined (``invalid_utf8``). A byte
    right after an unescaped backslash becomes ``?``, an invalid escape: malformed JSON either way."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._held = ""  # trailing backslashes, judged with the next chunk
        self.escaped = 0

    def __call__(self, chunk: bytes, final: bool = False) -> bytes:
        text = self._held + self._decoder.decode(chunk, final)
        ready = text if final else text.rstrip("\\")
        self._held = text[len(ready) :]
        if not ready.isascii() and _ESCAPED_BYTE.search(ready):
            ready, n = _BYTE_AFTER_BACKSLASHES.subn(self._escape, ready)
            self.escaped += n
        return ready.encode("utf-8")

    @staticmethod
    def _escape(match: re.Match) -> str:
        backslashes, byte = match[1], match[2]
        return backslashes + ("?" if len(backslashes) % 2 else f"\\u{ord(byte):04x}")


class _ValueBuilder:
    """One top-level JSON value rebuilt from ijson events, with the text that
    ``json.dumps(value, ensure_ascii=False)`` gives for it. Once the text passes ``max_bytes``
    it keeps neither the value nor more text, and only goes on measuring the size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[str] = []
        self.size = 0
        self.value: Any = None
        self._open: list[list] = []  # [container, key] of each container being filled
        self._depth = 0
        self._comma = False

    def add(self, event: str, value: Any) -> bool:
        """Take one event; True once the value is complete."""
        if event in ("end_map", "end_array"):
            self._write("}" if event == "end_map" else "]")
            self._comma, self._depth = True, self._depth - 1
            if self._open:
                self._put(self._open.pop()[0])
            return self._depth == 0
        separator = ", " if self._comma else ""
        if event == "map_key":
            self._write(f"{separator}{encode_basestring(value)}: ")
            self._comma = False
            if self._open:
                self._open[-1][1] = value
            return False
        if event in ("start_map", "start_array"):
            self._write(separator + ("{" if event == "start_map" else "["))
            self._comma, self._depth = False, self._depth + 1
            if self.size <= self.max_bytes:
                self._open.append([{} if event == "start_map" else [], None])
            return False
        if isinstance(value, Decimal):  # ijson's non-integers, as float like json.loads
            value = float(value)
        self._write(separator + (encode_basestring(value) if isinstance(value, str) else json.dumps(value)))
        self._comma = True
        self._put(value)
        return self._depth == 0

    def item(self, position: int, undecodable_bytes: bool) -> RawItem:
        text = "".join(self.parts)
        if self.size > self.max_bytes:
            prefix = _storable_text(text[:RAW_PREFIX_BYTES]).encode("utf-8")
            return _too_large(position, prefix, self.size, self.max_bytes)
        return _decoded(position, text, self.value, undecodable_bytes)

    def _write(self, piece: str) -> None:
        if self.size <= self.max_bytes:
            self.parts.append(piece)
        self.size += len(piece) if piece.isascii() else len(piece.encode("utf-8", "surrogatepass"))
        if self.size > self.max_bytes:  # too large: stop holding it
            self._open.clear()
            self.value = None

    def _put(self, value: Any) -> None:
        if self.size > self.max_bytes:
            return
        if not self._open:
            self.value = value
        elif isinstance(container := self._open[-1][0], dict):
            container[self._open[-1][1]] = value
        else:
            container.append(value)


@dataclass
class _Unparsed:
    """The bytes from where the last complete record was seen on: what a broken stream leaves
    unread. Holds at most :data:`RAW_PREFIX_BYTES` and counts the rest."""

    start: int
    kept: bytearray = field(default_factory=bytearray)
    size: int = 0

    def add(self, chunk: bytes) -> None:
        self.kept += chunk[: RAW_PREFIX_BYTES - len(self.kept)]
        self.size += len(chunk)

    def restart(self, start: int, chunk: bytes) -> None:
        self.start, self.kept, self.size = start, bytearray(), 0
        self.add(chunk)


def _read_json(f: BinaryIO, max_record_bytes: int) -> Iterator[RawItem]:
    """A JSON document, streamed with ijson: each element of a top-level array (or the one
    top-level value) is an item. Where the stream breaks (cut file, bad token, number too large)
    the unread rest becomes one item: ``unreadable_file`` when no record was read, else the
    reason found or ``malformed_json``. Its raw text starts at the start of the read (of
    :data:`READ_CHUNK` bytes, more within a long record) in which the last good record ended, so
    it may repeat that record's end; records after the break are in it, not read."""
    events = ijson.sendable_list()
    parser = _IJSON.basic_parse_coro(events, use_float=False)
    escape = _EscapeUndecodableBytes()
    unparsed = _Unparsed(start=f.tell())
    in_array: bool | None = None
    builder: _ValueBuilder | None = None
    index, read_size = 0, READ_CHUNK
    while True:
        offset, chunk = f.tell(), f.read(read_size)
        unparsed.add(chunk)
        read_size = min(2 * read_size, MAX_READ_CHUNK)
        broken: Exception | None = None
        try:
            if data := escape(chunk, final=not chunk):
                parser.send(data)  # never empty: that would end the parser without its end-of-input checks
            if not chunk:
                parser.close()
        except (ijson.JSONError, ValueError) as exc:  # also json's JSONDecodeError for bad strings
            broken = exc
        for event, value in events:
            if in_array is None:
                in_array = event == "start_array"
                if in_array:
                    continue
            if in_array and builder is None and event == "end_array":
                continue  # the end of the top-level array itself
            builder = builder or _ValueBuilder(max_record_bytes)
            if builder.add(event, value):
                yield builder.item(index, escape.escaped > 0)
                builder, index, read_size = None, index + 1, READ_CHUNK
                unparsed.restart(offset, chunk)
        del events[:]
        if broken is not None:
            yield _broken_stream_item(index, unparsed, broken)
            return
        if not chunk:
            return


def _broken_stream_item(position: int, unparsed: _Unparsed, exc: Exception) -> RawItem:
    if _number_too_large(exc.__context__):
        reason = Reason.NUMBER_TOO_LARGE
    else:
        reason = Reason.MALFORMED_JSON if position else Reason.UNREADABLE_FILE
    detail = f"JSON breaks at record {position} ({exc}); raw is the file from byte {unparsed.start} on"
    if reason is Reason.UNREADABLE_FILE:
        detail = f"not a JSON document: {exc}"
    return RawItem(position, _prefix_text(bytes(unparsed.kept), unparsed.size), error=RecordError(reason, detail))


def _read_parquet(f: BinaryIO, size: int, max_record_bytes: int) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    yield from _read_batches(lambda: pq.ParquetFile(f).iter_batches(), f, size, max_record_bytes, "Parquet")


def _read_arrow(f: BinaryIO, size: int, max_record_bytes: int) -> Iterator[RawItem]:
    """An Arrow IPC file: the stream format Hugging Face ``datasets`` writes (``save_to_disk``
    folders, the hub cache), or the random-access file format; one record batch at a time."""
    import pyarrow as pa

    def batches():
        if f.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC:
            f.seek(0)
            reader = pa.ipc.open_file(f)
            return (reader.get_batch(i) for i in range(reader.num_record_batches))
        f.seek(0)
        return iter(pa.ipc.open_stream(f))

    yield from _read_batches(batches, f, size, max_record_bytes, "Arrow IPC")


def _read_batches(batches, f: BinaryIO, size: int, max_record_bytes: int, kind: str) -> Iterator[RawItem]:
    """Each row of the record batches ``batches()`` yields, as a JSON record; a file that stops
    reading gives one item saying after which row."""
    import pyarrow as pa

    index = 0
    try:
        for batch in batches():
            for value in batch.to_pylist():
                raw = json.dumps(value, ensure_ascii=False, default=str)
                raw_size = len(raw.encode("utf-8"))
                if raw_size > max_record_bytes:
                    yield _too_large(index, raw.encode("utf-8"), raw_size, max_record_bytes)
                else:
                    yield _decoded(index, raw, value)
                index += 1
    except (pa.ArrowException, OSError) as exc:
        detail = f"not a {kind} file: {exc}" if index == 0 else f"{kind} read fails after row {index}: {exc}"
        yield _whole_file(f, size, index, Reason.UNREADABLE_FILE, detail)


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
