"""Small helpers shared by tests."""

from pathlib import Path


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    """Write raw lines (str or bytes) as a JSON-lines file."""
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(data)
    return path
