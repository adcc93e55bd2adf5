"""A large JSON-lines file cut into shards of N lines, each ingested as its own pool batch, so
every per-batch step (validation, embeddings, scores, gradient features) runs per shard and the
shards' model steps can run side by side, one per device. Lines are copied byte for byte (an
invalid line is quarantined in its shard as it would have been in the file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

JSON_LINES = (".jsonl", ".ndjson")


def shard_folder(root: Path, path: Path) -> Path:
    """The folder of ``path``'s shards: named after the file and its location, so two files of the
    same name never share one."""
    return root / f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


def shard_name(path: Path, first: int, last: int) -> str:
    """``name.lines-<first>-<last>.jsonl``: the source file and its 1-based line range."""
    return f"{path.stem}.lines-{first:09d}-{last:09d}{path.suffix}"


def split_lines(path: Path, rows: int, folder: Path) -> list[Path]:
    """Cut ``path`` into files of ``rows`` lines under ``folder`` (a shard already written with the
    same bytes is kept); a file of at most ``rows`` lines is returned as it is."""
    if rows < 1:
        raise ValueError(f"shard_rows: must be >= 1, got {rows}")
    if path.suffix.lower() not in JSON_LINES:
        raise ValueError(f"shard_rows: {path} is not a JSON-lines file ({', '.join(JSON_LINES)}); only those are cut")
    shards: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as source:
        lines, first, number = [], 1, 0
        for line in source:
            number += 1
            lines.append(line)
            if len(lines) == rows:
                shards.append(_write(folder / shard_name(path, first, number), lines))
                lines, first = [], number + 1
        if lines:
            shards.append(_write(folder / shard_name(path, first, number), lines))
    if len(shards) <= 1:
        for shard in shards:
            shard.unlink()
        return [path]
    return shards


def _write(target: Path, lines: list[bytes]) -> Path:
    """Write atomically (a killed ingest leaves whole shards or none)."""
    data = b"".join(lines)
    if target.is_file() and target.read_bytes() == data:
        return target
    staging = target.with_name(f".{target.name}.partial")
    staging.write_bytes(data)
    staging.replace(target)
    return target
