"""Bad input: every kind goes to quarantine with its reason and raw text, and the good rows
around it still load. accepted + quarantined = read, always."""

import json

import pytest

from dsel_assets.core.data.schema import Reason
from dsel_assets.core.data.validate import validate_file
from dsel_assets.core.models.templates import token_counter

from ..helpers import write_jsonl


def alpaca(i: int) -> str:
    return json.dumps({"instruction": f"Good question {i}?", "input": "", "output": f"Good answer {i}."})


def chat(*turns: tuple[str, object]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD_CHAT = [("user", "Hi there?"), ("assistant", "Hello!")]

# (case id, bad line, expected reason). Each bad line sits between two good rows.
ALPACA_CASES = [
    ("truncated-json", '{"instruction": "Half written", "output": ', Reason.MALFORMED_JSON),
    ("invalid-utf8", b'{"instruction": "caf\xe9 \xff", "input": "", "output": "x"}', Reason.INVALID_UTF8),
    ("not-an-object", "[1, 2, 3]", Reason.NOT_AN_OBJECT),
    ("scalar-record", '"just a string"', Reason.NOT_AN_OBJECT),
    ("missing-output", json.dumps({"instruction": "No answer here"}), Reason.MISSING_FIELD),
    ("empty-instruction", json.dumps({"instruction": "   ", "input": "", "output": "x"}), Reason.EMPTY_FIELD),
    ("empty-output", json.dumps({"instruction": "Say x", "input": "", "output": ""}), Reason.EMPTY_FIELD),
    ("non-string", json.dumps({"instruction": 42, "input": "", "output": "x"}), Reason.NON_STRING_FIELD),
    ("null-output", json.dumps({"instruction": "Say x", "input": "", "output": None}), Reason.MISSING_FIELD),
    (
        "control-chars",
        json.dumps({"instruction": "Bad \u0000 byte", "input": "", "output": "x"}),
        Reason.CONTROL_CHARACTERS,
    ),
]
CHAT_CASES = [
    ("empty-conversation", json.dumps({"messages": []}), Reason.EMPTY_CONVERSATION),
    ("turn-not-object", json.dumps({"messages": [42, {"role": "assistant", "content": "x"}]}), Reason.MALFORMED_TURN),
    ("turn-without-content", json.dumps({"messages": [{"role": "user"}]}), Reason.MALFORMED_TURN),
    ("unknown-role", chat(("robot", "beep"), ("assistant", "boop")), Reason.UNKNOWN_ROLE),
    ("misplaced-system", chat(("user", "a"), ("system", "b"), ("assistant", "c")), Reason.MISPLACED_SYSTEM),
    ("not-alternating", chat(("user", "a"), ("user", "b"), ("assistant", "c")), Reason.ROLES_NOT_ALTERNATING),
    ("ends-on-user", chat(("user", "a"), ("assistant", "b"), ("user", "c")), Reason.NOT_ENDING_ON_ASSISTANT),
    ("non-string-content", chat(("user", ["a", "list"]), ("assistant", "b")), Reason.NON_STRING_FIELD),
    ("messages-not-a-list", json.dumps({"messages": "user: hi"}), Reason.MALFORMED_TURN),
    ("only-system", chat(("system", "be nice")), Reason.EMPTY_CONVERSATION),
]


def check_sandwich(tmp_path, name, good_before, bad, good_after, expected, **kwargs):
    path = write_jsonl(tmp_path / name, [good_before, bad, good_after])
    result = validate_file(path, **kwargs)
    assert result.read == 3
    assert len(result.accepted) == 2, result.quarantined
    assert [row["position"] for row in result.accepted] == [1, 3]
    (row,) = result.quarantined
    assert row["reason"] == expected.value
    assert row["position"] == 2
    assert row["raw"]  # the raw text is kept
    return row


@pytest.mark.parametrize(("bad", "expected"), [c[1:] for c in ALPACA_CASES], ids=[c[0] for c in ALPACA_CASES])
def test_alpaca_bad_rows(tmp_path, bad, expected):
    # the layout is declared so that a bad first row cannot change the file's detection
    check_sandwich(tmp_path, "a.jsonl", alpaca(1), bad, alpaca(2), expected, layout="alpaca")


@pytest.mark.parametrize(("bad", "expected"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_chat_bad_rows(tmp_path, bad, expected):
    good2 = chat(("user", "Second?"), ("assistant", "Yes."))
    check_sandwich(tmp_path, "c.jsonl", chat(*GOOD_CHAT), bad, good2, expected)


def test_invalid_utf8_raw_text_is_lossless(tmp_path):
    bad = b'{"instruction": "\xff\xfe", "output": "x"}'
    row = check_sandwich(tmp_path, "u.jsonl", alpaca(1), bad, alpaca(2), Reason.INVALID_UTF8, layout="alpaca")
    assert "\\xff\\xfe" in row["raw"]


def test_exact_duplicates_within_a_file_and_against_the_pool(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [alpaca(1), alpaca(2), alpaca(1), alpaca(3)])
    result = validate_file(path)
    assert [r["reason"] for r in result.quarantined] == [Reason.DUPLICATE.value]
    assert "position 1" in result.quarantined[0]["detail"]
    known = {result.accepted[2]["pool_id"]: "batch evals (eval)"}  # alpaca(3) stored by an earlier batch
    again = validate_file(path, known_ids=known)
    assert sorted(r["reason"] for r in again.quarantined) == [Reason.DUPLICATE.value] * 2
    assert any("batch evals (eval)" in r["detail"] for r in again.quarantined)
    assert len(again.accepted) == 2


def test_over_token_limit_uses_the_model_tokenizer(tmp_path, tokenizer):
    long = json.dumps({"instruction": "Repeat: " + "word " * 400, "input": "", "output": "ok"})
    row = check_sandwich(
        tmp_path,
        "t.jsonl",
        alpaca(1),
        long,
        alpaca(2),
        Reason.OVER_TOKEN_LIMIT,
        count_tokens=token_counter(tokenizer),
        max_tokens=128,
    )
    assert "> 128" in row["detail"]


def test_accepted_rows_carry_token_counts(tmp_path, tokenizer):
    result = validate_file(write_jsonl(tmp_path / "a.jsonl", [alpaca(1)]), count_tokens=token_counter(tokenizer))
    assert 10 < result.accepted[0]["n_tokens"] < 60


def test_parquet_that_is_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("instruction,output\nhello,world\n")
    result = validate_file(path)
    assert result.accepted == []
    (row,) = result.quarantined
    assert row["reason"] == Reason.UNREADABLE_FILE.value and "hello,world" in row["raw"]


def test_json_file_that_is_not_json(tmp_path):
    # nothing in it parses (a cut JSON array keeps its whole records: see test_bad_inputs.py)
    path = tmp_path / "broken.json"
    path.write_text('{"instruction": "a", "output": ')
    (row,) = validate_file(path).quarantined
    assert row["reason"] == Reason.UNREADABLE_FILE.value
    assert row["raw"] == '{"instruction": "a", "output": '


def test_records_of_no_known_layout(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [json.dumps({"foo": 1}), json.dumps({"bar": 2})])
    result = validate_file(path)
    assert result.layout is None
    assert [r["reason"] for r in result.quarantined] == [Reason.UNKNOWN_LAYOUT.value] * 2


def test_mixed_layout_rows_fail_the_detected_layout(tmp_path):
    other = json.dumps({"question": "1+1?", "answer": "2"})
    row = check_sandwich(tmp_path, "m.jsonl", alpaca(1), other, alpaca(2), Reason.MISSING_FIELD)
    assert row["detail"] == "instruction"


def test_mapping_with_a_missing_column(tmp_path):
    good = json.dumps({"p": "Prompt one?", "r": "Reply one."})
    bad = json.dumps({"p": "Prompt two?"})
    good2 = json.dumps({"p": "Prompt three?", "r": "Reply three."})
    check_sandwich(tmp_path, "g.jsonl", good, bad, good2, Reason.MISSING_FIELD, mapping="prompt=p,response=r")


def test_blank_lines_are_separators_not_records(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [alpaca(1), "", "   ", alpaca(2)])
    result = validate_file(path)
    assert result.read == 2 and len(result.accepted) == 2


def test_at_least_fifteen_kinds_are_covered():
    kinds = {c[-1] for c in ALPACA_CASES + CHAT_CASES} | {
        Reason.DUPLICATE,
        Reason.OVER_TOKEN_LIMIT,
        Reason.UNREADABLE_FILE,
        Reason.UNKNOWN_LAYOUT,
    }
    covered_in_test_bad_inputs = {
        Reason.TOO_DEEP,
        Reason.NUMBER_TOO_LARGE,
        Reason.INVALID_UNICODE,
        Reason.RECORD_TOO_LARGE,
        Reason.FILE_TOO_LARGE,
        Reason.INVALID_RECORD,
    }
    assert kinds | covered_in_test_bad_inputs == set(Reason)
