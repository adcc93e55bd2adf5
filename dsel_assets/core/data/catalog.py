"""Known public files and the labels they get when ingested without --source/--task.

Task labels are capabilities shared across sources (a targeted method asks for "math",
whichever file the math came from); the source keeps the file's origin.
"""

from __future__ import annotations

import os
import re
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

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".arrow")
#: Files that mark a Hugging Face ``datasets`` ``save_to_disk`` folder (a Dataset, a DatasetDict).
HF_FOLDER_MARKERS = ("state.json", "dataset_dict.json")


def labels_for(path: Path, source: str | None, task: str | None, split: str | None) -> SourceLabels:
    """Explicit values win; then the catalog; then the file stem / ``general`` / ``pool``."""
    known = KNOWN_FILES.get(path.name)
    return SourceLabels(
        source=source or (known.source if known else _hf_folder_name(path) or path.stem),
        task=task or (known.task if known else "general"),
        split=split or (known.split if known else "pool"),
    )


def _hf_folder_name(path: Path) -> str | None:
    """The source name of an Arrow file of Hugging Face ``datasets``: a ``save_to_disk`` shard
    (``data-00000-of-00001.arrow``) is named after its folder, with the split's for a DatasetDict
    (``mydata_train``); a hub-cache file (``NAME-SPLIT[-00000-of-00002].arrow``) ``NAME_SPLIT``."""
    if path.suffix != ".arrow":
        return None
    folder = path.parent
    if re.fullmatch(r"data-\d{5}-of-\d{5}", path.stem):
        return f"{folder.parent.name}_{folder.name}" if (folder.parent / "dataset_dict.json").is_file() else folder.name
    cached = re.fullmatch(r"(.+)-(\w+?)(-\d{5}-of-\d{5})?", path.stem)
    if cached and (folder / "dataset_info.json").is_file():
        return f"{cached.group(1)}_{cached.group(2)}"
    return None


#: ``hf://NAME[:SPLIT]``: a dataset in the local Hugging Face cache.
HUB_PREFIX = "hf://"


def hub_dataset_files(spec: str, allow_hub: bool = False) -> list[Path]:
    """The cached Arrow files of ``hf://NAME[:SPLIT]`` (every split when none is named), from
    the local cache only (offline) unless ``allow_hub``."""
    name, _, split = spec.removeprefix(HUB_PREFIX).partition(":")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise ValueError(f"path: {spec!r} is not hf://NAME[:SPLIT] with a dataset name like owner/name")
    offline = not allow_hub  # as for models: no download unless allowed
    if offline:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"path: {spec} needs the datasets package: pip install 'dsel[hf]'") from None
    if offline:
        datasets.config.HF_HUB_OFFLINE = True  # also when datasets was imported before the variable was set
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as exc:  # datasets raises several types for "not in the cache" when offline
        raise FileNotFoundError(
            f"path: {spec}: not found in the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Download it where there is network "
            f"(python -c \"import datasets; datasets.load_dataset('{name}')\") or set HF_DATASETS_CACHE"
        ) from None
    parts = [loaded] if split else [loaded[key] for key in sorted(loaded)]
    return [Path(f["filename"]) for part in parts for f in part.cache_files]


def expand_paths(paths: list[str | Path], allow_hub: bool = False) -> list[Path]:
    """Files as given, directories expanded (recursively, sorted) to their data files; a Hugging
    Face ``save_to_disk`` folder to its Arrow files only (its JSON files describe the data);
    ``hf://NAME[:SPLIT]`` to the cached Arrow files of that dataset (downloaded first only with
    ``allow_hub``)."""
    files: list[Path] = []
    for given in paths:
        if str(given).startswith(HUB_PREFIX):
            files.extend(hub_dataset_files(str(given), allow_hub))
            continue
        path = Path(given)
        if path.is_dir() and any((path / marker).is_file() for marker in HF_FOLDER_MARKERS):
            files.extend(sorted(path.rglob("*.arrow")))
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in DATA_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"path: {path} does not exist")
    return files
