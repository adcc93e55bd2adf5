"""Known public files and the labels they get when ingested without --source/--task.

Task labels are capabilities shared across sources (a targeted method asks for "math",
whichever file the math came from); the source keeps the file's origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceLabels:
    source: str
    task: str
    split: str = "pool"


#: File name -> labels, for the files described in ``shared/data/SOURCES.md``.
KNOWN_FILES: dict[str, SourceLabels] = {
    "alpaca_gpt4_9k.json": SourceLabels("alpaca_gpt4", "general"),
    "alpaca_cherry_3k.json": SourceLabels("alpaca_cherry", "general"),
    "codealpaca_4k5.json": SourceLabels("codealpaca", "code"),
    "codealpaca_2k.json": SourceLabels("codealpaca_2k", "code"),
    "gsm8k_train.jsonl": SourceLabels("gsm8k", "math"),
    "lima_train.jsonl": SourceLabels("lima", "general"),
    "dialogsum_validation.json": SourceLabels("dialogsum", "summarization"),
    "bioinstruct_2k5.json": SourceLabels("bioinstruct", "biomedical"),
    "gsm8k_test.jsonl": SourceLabels("gsm8k_test", "math", "eval"),
    "dialogsum_test.json": SourceLabels("dialogsum_test", "summarization", "eval"),
    "alpaca_gpt4_kmeans_100.json": SourceLabels("nuggets_anchors", "general", "eval"),
}

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".pq")


def labels_for(path: Path, source: str | None, task: str | None, split: str | None) -> SourceLabels:
    """Explicit values win; then the catalog; then the file stem / ``general`` / ``pool``."""
    known = KNOWN_FILES.get(path.name)
    return SourceLabels(
        source=source or (known.source if known else path.stem),
        task=task or (known.task if known else "general"),
        split=split or (known.split if known else "pool"),
    )


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, directories expanded (recursively, sorted) to their data files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in DATA_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"path: {path} does not exist")
    return files
