"""Write selected examples in the layouts that fine-tuning frameworks read: the inverse of
:mod:`readers`, on canonical conversations (``[{"role", "content"}, ...]``: an optional leading
system turn, then user / assistant alternating, ending on the assistant, as validation left them).

Layouts (one record per line for the JSON-lines ones):

- ``original``: each record's text exactly as it was read (``raw``): the source line of a JSON-lines
  file byte for byte (without its line end), the JSON text of a JSON-array element or Parquet row.
- ``messages``: ``{"messages": [{"role", "content"}, ...]}`` (TRL, axolotl ``chat_template``,
  torchtune chat datasets, LLaMA-Factory's OpenAI-style sharegpt).
- ``sharegpt``: ``{"conversations": [{"from": "system" | "human" | "gpt", "value"}, ...]}``
  (LLaMA-Factory's sharegpt role tags; a leading ``system`` turn is its system prompt).
- ``alpaca``: ``{"instruction", "input", "output", "system"?, "history"?}`` (LLaMA-Factory's alpaca:
  the last user turn is the instruction, the last assistant turn the output, earlier
  ``[user, assistant]`` pairs the history; ``input`` is empty, the instruction holding the whole
  user turn as the canonical conversation has it).
- ``parquet``: the ``messages`` layout plus the lineage columns, one Parquet file (the manifest in
  its schema metadata under ``dsel_manifest``).
- ``hf``: the same table as a ``datasets`` ``save_to_disk`` folder (the manifest in its
  ``DatasetInfo.description``).

Pure: no state database, Dagster or MLflow; the caller gathers the rows and the manifest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("original", "messages", "sharegpt", "alpaca", "parquet", "hf")
#: formats written as one JSON object per line
JSONL_FORMATS = ("original", "messages", "sharegpt", "alpaca")
#: formats that LLaMA-Factory reads through a ``dataset_info.json`` entry
LLAMA_FACTORY_FORMATS = ("sharegpt", "alpaca")
#: formats whose layout has a place for a system turn (a system turn is dropped, and counted, elsewhere)
KEEPS_SYSTEM = {"original": True, "messages": True, "sharegpt": True, "alpaca": True, "parquet": True, "hf": True}

#: canonical role -> sharegpt ``from`` tag
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
#: the ``tags`` of a LLaMA-Factory sharegpt ``dataset_info.json`` entry for these files
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
#: the lineage columns of the ``parquet`` and ``hf`` layouts, in order
LINEAGE_COLUMNS = (
    "method",
    "budget",
    "selection_seed",
    "rank",
    "pool_id",
    "score",
    "task",
    "source",
    "batch",
    "source_file",
    "stored_file",
    "file_sha256",
    "position",
)
MANIFEST_METADATA_KEY = b"dsel_manifest"


@dataclass(frozen=True)
class ExportRow:
    """One selected example: its canonical conversation, its record as read, and its lineage
    (a value for each of :data:`LINEAGE_COLUMNS`)."""

    messages: list[dict[str, str]]
    raw: str
    lineage: dict[str, Any]


@dataclass
class Written:
    """What an export wrote: the data path, per-layout counts, and the LLaMA-Factory entry."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    dataset_info: dict[str, Any] | None = None


def _split_system(messages: Sequence[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    """(the leading system turn's text or None, the user / assistant turns), checking the
    alternation the layouts below rely on."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    roles = [t["role"] for t in turns]
    expected = ["user", "assistant"] * (len(turns) // 2)
    if not turns or roles != expected:
        raise ValueError(f"conversation: roles {roles} are not user/assistant pairs after an optional system turn")
    return system, turns


def messages_record(messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """``{"messages": [{"role", "content"}, ...]}``."""
    _split_system(messages)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def sharegpt_record(messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """``{"conversations": [{"from", "value"}, ...]}`` with LLaMA-Factory's role tags."""
    _split_system(messages)
    return {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in messages]}


def alpaca_record(messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """``{"instruction", "input", "output"}``, with ``system`` when the conversation has one and
    ``history`` (earlier ``[user, assistant]`` pairs) when it has more than one exchange."""
    system, turns = _split_system(messages)
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    *history, (instruction, output) = pairs
    record: dict[str, Any] = {"instruction": instruction, "input": "", "output": output}
    if system is not None:
        record["system"] = system
    if history:
        record["history"] = history
    return record


def dataset_info_entry(fmt: str, file_name: str, columns: Sequence[str] = ()) -> dict[str, Any]:
    """The LLaMA-Factory ``dataset_info.json`` entry of a ``sharegpt`` or ``alpaca`` file
    (``file_name``, ``formatting``, ``columns`` and, for sharegpt, ``tags``); ``columns``: the
    optional alpaca columns the file has (``system``, ``history``)."""
    if fmt == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": dict(SHAREGPT_TAGS),
        }
    if fmt == "alpaca":
        mapped = {"prompt": "instruction", "query": "input", "response": "output"}
        mapped |= {name: name for name in ("system", "history") if name in columns}
        return {"file_name": file_name, "formatting": "alpaca", "columns": mapped}
    raise ValueError(f"format: LLaMA-Factory entries exist for {list(LLAMA_FACTORY_FORMATS)}, not {fmt!r}")


#: line ends that JSON leaves raw inside strings, escaped in the layouts' lines
_RAW_LINE_ENDS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def json_line(record: Any) -> str:
    """One JSON-lines line: UTF-8 text without ASCII escaping, except the line ends JSON leaves
    raw (U+0085, U+2028, U+2029: only inside strings), escaped so that no line-splitting reader
    (Python's ``str.splitlines``, JavaScript) cuts a record in two."""
    return json.dumps(record, ensure_ascii=False).translate(_RAW_LINE_ENDS) + "\n"


def layout_records(fmt: str, rows: Sequence[ExportRow]) -> tuple[list[Any], dict[str, int]]:
    """The records of a JSON-lines layout and its counts: ``system_turns`` (conversations with a
    system turn), ``system_turns_dropped``, ``with_history`` (alpaca records with a history).
    Alpaca's optional columns are written on every record once any record has them (empty
    otherwise), so every reader sees one schema."""
    system_turns = sum(1 for r in rows if r.messages and r.messages[0]["role"] == "system")
    counts = {
        "system_turns": system_turns,
        "system_turns_dropped": 0 if KEEPS_SYSTEM[fmt] else system_turns,
    }
    if fmt == "original":
        for row in rows:  # a JSON-lines record never holds "\n" (lines were split on it); others are one line
            if "\n" in row.raw:
                raise ValueError(f"original: record {row.lineage.get('pool_id')} spans several lines")
        return [row.raw for row in rows], counts
    if fmt == "messages":
        return [messages_record(r.messages) for r in rows], counts
    if fmt == "sharegpt":
        return [sharegpt_record(r.messages) for r in rows], counts
    if fmt == "alpaca":
        records = [alpaca_record(r.messages) for r in rows]
        counts["with_history"] = sum(1 for r in records if "history" in r)
        for name, empty in (("system", ""), ("history", [])):
            if any(name in r for r in records):
                for r in records:
                    r.setdefault(name, empty)
        return records, counts
    raise ValueError(f"format: {fmt!r} is not a JSON-lines layout; one of {list(JSONL_FORMATS)}")


def lineage_table(rows: Sequence[ExportRow], manifest: dict[str, Any] | None = None):
    """The ``messages`` layout with the lineage columns, as a pyarrow table (the manifest, when
    given, in its schema metadata)."""
    import pyarrow as pa

    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    types = {
        "method": pa.string(),
        "budget": pa.string(),
        "selection_seed": pa.int32(),
        "rank": pa.int32(),
        "pool_id": pa.string(),
        "score": pa.float64(),
        "task": pa.string(),
        "source": pa.string(),
        "batch": pa.string(),
        "source_file": pa.string(),
        "stored_file": pa.string(),
        "file_sha256": pa.string(),
        "position": pa.int64(),
    }
    schema = pa.schema([("messages", pa.list_(turn)), *((name, types[name]) for name in LINEAGE_COLUMNS)])
    if manifest is not None:
        schema = schema.with_metadata({MANIFEST_METADATA_KEY: json.dumps(manifest, default=str).encode()})
    columns = {"messages": [messages_record(r.messages)["messages"] for r in rows]}
    columns |= {name: [r.lineage.get(name) for r in rows] for name in LINEAGE_COLUMNS}
    return pa.table(columns, schema=schema)


@contextmanager
def _replacing(path: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write into, moved onto ``path`` when the block ends
    without an error (an interrupted export never leaves half a file under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = staging / path.name
        if folder:
            target.mkdir()
        yield target
        if folder and path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_format(fmt: str) -> None:
    """A ValueError, before any work, for a format that is unknown or whose writer is not installed."""
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {list(FORMATS)}")
    if fmt == "hf" and importlib.util.find_spec("datasets") is None:
        raise ValueError("format: hf needs the datasets package: pip install 'dsel[hf]' (or pip install datasets)")


def write(fmt: str, rows: Sequence[ExportRow], path: Path, manifest: dict[str, Any]) -> Written:
    """Write ``rows`` (in order) in layout ``fmt`` at ``path`` (a file; a folder for ``hf``),
    replacing what is there; ``manifest`` goes into the Parquet / ``datasets`` metadata. The
    caller decides whether ``path`` may be replaced."""
    check_format(fmt)
    path = Path(path)
    if fmt in JSONL_FORMATS:
        records, counts = layout_records(fmt, rows)
        with _replacing(path) as target, target.open("w", encoding="utf-8", newline="\n") as out:
            for record in records:
                out.write(record + "\n" if fmt == "original" else json_line(record))
        columns = [name for name in ("system", "history") if records and name in records[0]]
        info = dataset_info_entry(fmt, path.name, columns) if fmt in LLAMA_FACTORY_FORMATS else None
        return Written(path, counts | {"rows": len(rows)}, info)
    _, counts = layout_records("messages", rows)
    table = lineage_table(rows, manifest if fmt == "parquet" else None)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _replacing(path) as target:
            pq.write_table(table, target)
    else:
        import datasets

        info = datasets.DatasetInfo(description=json.dumps(manifest, default=str))
        dataset = datasets.Dataset(datasets.table.InMemoryTable(table), info=info)
        with _replacing(path, folder=True) as target:
            dataset.save_to_disk(str(target))
    return Written(path, counts | {"rows": len(rows)})
