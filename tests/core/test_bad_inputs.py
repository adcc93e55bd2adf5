"""Hostile input: each bad record costs itself (one quarantine row with its reason), never the
file; the good records around it load with their content, and accepted + quarantined = read."""

import json
import tracemalloc
from pathlib import Path

import pytest

from dsel_assets.core.data import validate
from dsel_assets.core.data.readers import RAW_PREFIX_BYTES, read_items
from dsel_assets.core.data.schema import Reason
from dsel_assets.core.data.validate import ValidationResult, validate_file

from ..helpers import write_jsonl

BOM = b"\xef\xbb\xbf"
DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000
HUGE_INT = json.dumps({"instruction": "Count", "input": "", "output": "x"})[:-1] + ', "n": ' + "9" * 5000 + "}"
LONE_SURROGATE = '{"instruction": "a \\ud800 b", "input": "", "output": "c"}'
LONE_SURROGATE_KEY = '{"instruction": "a", "input": "", "output": "c", "meta": {"\\udfff": 1}}'


def good(i: int) -> str:
    return json.dumps({"instruction": f"Good question {i}?", "input": "", "output": f"Good answer {i}."})


def json_array(path: Path, elements: list[str | bytes], prefix: bytes = b"") -> Path:
    """Write ``elements`` (JSON texts) as one JSON array."""
    path.write_bytes(prefix + b"[" + b", ".join(e if isinstance(e, bytes) else e.encode() for e in elements) + b"]")
    return path


def check(result: ValidationResult, good_ids: list[int], bad: list[tuple[int, Reason]]) -> None:
    """Exactly these good records accepted, with their content, and these (position, reason) rows
    quarantined, each with raw text a UTF-8 table can store."""
    assert (len(result.accepted), len(result.quarantined)) == (len(good_ids), len(bad))
    assert result.read == len(good_ids) + len(bad)
    assert [row["messages"] for row in result.accepted] == [
        [{"role": "user", "content": f"Good question {i}?"}, {"role": "assistant", "content": f"Good answer {i}."}]
        for i in good_ids
    ]
    assert [(row["position"], row["reason"]) for row in result.quarantined] == [(p, r.value) for p, r in bad]
    for row in result.quarantined:
        assert row["raw"] and row["raw"].encode("utf-8")


def test_deep_nesting_in_jsonl(tmp_path):
    moderately_deep = good(9)[:-1] + ', "meta": ' + "[" * 150 + "]" * 150 + "}"  # parses, but over MAX_DEPTH
    lines = [good(0), "[" * 100_000, good(1), DEEP_OBJECT, good(2), moderately_deep]
    result = validate_file(write_jsonl(tmp_path / "deep.jsonl", lines))
    check(result, [0, 1, 2], [(2, Reason.TOO_DEEP), (4, Reason.TOO_DEEP), (6, Reason.TOO_DEEP)])


def test_deep_nesting_in_a_json_array(tmp_path):
    path = json_array(tmp_path / "deep.json", [good(0), DEEP_ARRAY, good(1), DEEP_OBJECT, good(2)])
    result = validate_file(path)
    check(result, [0, 1, 2], [(1, Reason.TOO_DEEP), (3, Reason.TOO_DEEP)])
    assert result.quarantined[0]["raw"] == DEEP_ARRAY  # the raw text is kept in full


def test_huge_integer_in_jsonl(tmp_path):
    result = validate_file(write_jsonl(tmp_path / "n.jsonl", [good(0), HUGE_INT, good(1), good(2)]))
    check(result, [0, 1, 2], [(2, Reason.NUMBER_TOO_LARGE)])
    assert result.quarantined[0]["raw"] == HUGE_INT


def test_huge_integer_in_a_json_array_keeps_the_records_before_it(tmp_path):
    # the parser cannot go on past the number: the rest of the array is one row, its text kept
    result = validate_file(json_array(tmp_path / "n.json", [good(0), good(1), HUGE_INT, good(2)]))
    check(result, [0, 1], [(2, Reason.NUMBER_TOO_LARGE)])
    assert "9" * 5000 in result.quarantined[0]["raw"] and good(2) in result.quarantined[0]["raw"]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_lone_surrogate_in_a_value_or_a_key(tmp_path, fmt):
    records = [good(0), LONE_SURROGATE, good(1), LONE_SURROGATE_KEY, good(2)]
    if fmt == "jsonl":
        result = validate_file(write_jsonl(tmp_path / "s.jsonl", records))
        positions = [2, 4]
    else:
        result = validate_file(json_array(tmp_path / "s.json", records))
        positions = [1, 3]
    check(result, [0, 1, 2], [(p, Reason.INVALID_UNICODE) for p in positions])
    assert "\\ud800" in result.quarantined[0]["raw"] and "\\udfff" in result.quarantined[1]["raw"]


def test_truncated_json_array_keeps_its_whole_records(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text("[" + ", ".join(good(i) for i in range(3)) + ', {"instruction": "cut her')
    result = validate_file(path)
    check(result, [0, 1, 2], [(3, Reason.MALFORMED_JSON)])
    assert result.quarantined[0]["raw"].endswith(', {"instruction": "cut her')


def test_bom_before_a_json_array(tmp_path):
    result = validate_file(json_array(tmp_path / "bom.json", [good(i) for i in range(3)], prefix=BOM))
    check(result, [0, 1, 2], [])


def test_bom_before_jsonl(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + b"".join(good(i).encode() + b"\n" for i in range(3)))
    result = validate_file(path)
    check(result, [0, 1, 2], [])
    assert [row["position"] for row in result.accepted] == [1, 2, 3]


def test_invalid_utf8_inside_one_json_array_record(tmp_path):
    bad = b'{"instruction": "caf\xe9 \xff", "input": "", "output": "x"}'
    result = validate_file(json_array(tmp_path / "u.json", [good(0), bad, good(1), good(2)]))
    check(result, [0, 1, 2], [(1, Reason.INVALID_UTF8)])
    assert result.quarantined[0]["raw"] == '{"instruction": "caf\\xe9 \\xff", "input": "", "output": "x"}'


def test_pretty_printed_json_array_named_jsonl(tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text(json.dumps([json.loads(good(i)) for i in range(3)], indent=2))
    result = validate_file(path)
    check(result, [0, 1, 2], [])
    assert [row["position"] for row in result.accepted] == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_oversized_record_with_a_small_cap(tmp_path, fmt):
    big = json.dumps({"instruction": "x" * 100_000, "input": "", "output": "y"})
    records = [good(0), big, good(1), good(2)]
    if fmt == "jsonl":
        result = validate_file(write_jsonl(tmp_path / "big.jsonl", records), max_record_bytes=10_000)
        position = 2
    else:
        result = validate_file(json_array(tmp_path / "big.json", records), max_record_bytes=10_000)
        position = 1
    check(result, [0, 1, 2], [(position, Reason.RECORD_TOO_LARGE)])
    row = result.quarantined[0]
    assert f"{len(big)} bytes > max_record_bytes 10000" in row["detail"]
    assert row["raw"].startswith('{"instruction": "xxx') and "more bytes not kept" in row["raw"]
    assert len(row["raw"]) < RAW_PREFIX_BYTES + 200


def test_oversized_file_with_a_small_cap(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [good(i) for i in range(3)])
    result = validate_file(path, max_file_bytes=100)
    check(result, [], [(0, Reason.FILE_TOO_LARGE)])
    row = result.quarantined[0]
    assert f"{path.stat().st_size} bytes > max_file_bytes 100" in row["detail"]
    assert row["raw"] == path.read_text()  # under RAW_PREFIX_BYTES: all of it


def test_an_unexpected_error_costs_only_its_record(tmp_path, monkeypatch):
    real_to_messages = validate.to_messages

    def to_messages_failing_on_question_1(record, layout, mapping=None):
        if record["instruction"] == "Good question 1?":
            raise KeyError("boom")
        return real_to_messages(record, layout, mapping)

    monkeypatch.setattr(validate, "to_messages", to_messages_failing_on_question_1)
    path = write_jsonl(tmp_path / "e.jsonl", [good(i) for i in range(4)])
    result = validate_file(path)
    check(result, [0, 2, 3], [(2, Reason.INVALID_RECORD)])
    assert result.quarantined[0]["detail"] == "KeyError: 'boom'"

    def out_of_memory(record, layout, mapping=None):
        raise MemoryError

    monkeypatch.setattr(validate, "to_messages", out_of_memory)
    with pytest.raises(MemoryError):
        validate_file(path)


def test_an_oversized_line_is_skipped_without_being_held(tmp_path):
    long_line = b'{"instruction": "' + b"x" * 30_000_000 + b'"}'
    path = write_jsonl(tmp_path / "long.jsonl", [good(0), long_line, good(1)])
    del long_line
    tracemalloc.start()
    try:
        items = list(read_items(path, max_record_bytes=1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(item.position, item.error and item.error.reason) for item in items] == [
        (1, None),
        (2, Reason.RECORD_TOO_LARGE),
        (3, None),
    ]
    assert peak < 5_000_000  # the 30 MB line never is in memory
