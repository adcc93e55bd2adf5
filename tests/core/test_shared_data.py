"""All 11 files of ../shared/data load with the right labels (skips when the folder is absent)."""

import collections

import pytest

from dsel_assets.core.data.catalog import KNOWN_FILES, expand_paths, labels_for
from dsel_assets.core.data.validate import validate_file
from dsel_assets.core.models.templates import token_counter

# records per file, from shared/data/SOURCES.md
EXPECTED_RECORDS = {
    "alpaca_gpt4_9k.json": 9038,
    "alpaca_cherry_3k.json": 3111,
    "codealpaca_4k5.json": 4535,
    "codealpaca_2k.json": 2017,
    "gsm8k_train.jsonl": 7473,
    "lima_train.jsonl": 1030,
    "dialogsum_validation.json": 500,
    "bioinstruct_2k5.json": 2501,
    "gsm8k_test.jsonl": 1319,
    "dialogsum_test.json": 1500,
    "alpaca_gpt4_kmeans_100.json": 100,
}
EXPECTED_LAYOUT = {
    "alpaca_gpt4_9k.json": "alpaca",
    "alpaca_cherry_3k.json": "alpaca",
    "codealpaca_4k5.json": "alpaca",
    "codealpaca_2k.json": "alpaca",
    "gsm8k_train.jsonl": "qa",
    "lima_train.jsonl": "conversations",
    "dialogsum_validation.json": "dialogsum",
    "bioinstruct_2k5.json": "alpaca",
    "gsm8k_test.jsonl": "qa",
    "dialogsum_test.json": "dialogsum",
    "alpaca_gpt4_kmeans_100.json": "alpaca",
}


@pytest.fixture(scope="module")
def ingested(shared_data, tokenizer):
    """Validate the files in catalog order, each against the ids of the files before it."""
    files = expand_paths([shared_data])
    known: dict[str, str] = {}
    results = {}
    count = token_counter(tokenizer)
    for path in files:
        result = validate_file(path, count_tokens=count, max_tokens=4096, known_ids=known)
        known |= {row["pool_id"]: path.name for row in result.accepted}
        results[path.name] = (labels_for(path, None, None, None), result)
    return results


def test_every_file_is_found_and_labelled(ingested):
    assert set(ingested) == set(KNOWN_FILES) == set(EXPECTED_RECORDS)
    for name, (labels, result) in ingested.items():
        assert labels == KNOWN_FILES[name]
        assert result.layout == EXPECTED_LAYOUT[name], name


def test_nothing_is_lost(ingested):
    for name, (_, result) in ingested.items():
        assert len(result.accepted) + len(result.quarantined) == result.read == EXPECTED_RECORDS[name], name


def test_pool_size_and_known_defects(ingested):
    pool = sum(len(r.accepted) for labels, r in ingested.values() if labels.split == "pool")
    assert 29_000 < pool <= 30_205
    # SOURCES.md: one LIMA record ends on a user turn
    lima = ingested["lima_train.jsonl"][1]
    assert collections.Counter(q["reason"] for q in lima.quarantined)["not_ending_on_assistant"] == 1
    for _, result in ingested.values():
        assert len(result.quarantined) < 0.05 * result.read


def test_task_labels_cover_the_capabilities(ingested):
    tasks = {labels.task for labels, _ in ingested.values()}
    assert tasks == {"general", "code", "math", "summarization", "biomedical"}
    first_gsm8k = ingested["gsm8k_train.jsonl"][1].accepted[0]
    assert "####" in first_gsm8k["messages"][-1]["content"]
