"""Readers: every supported layout becomes the same canonical conversation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsel_assets.core.data.readers import (
    DIALOGSUM_PROMPT,
    FieldMapping,
    detect_layout,
    read_items,
    to_messages,
)
from dsel_assets.core.data.schema import example_id, example_text
from dsel_assets.core.data.validate import validate_file

from ..helpers import write_jsonl

CASES = [
    (
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        "alpaca",
        [("user", "Add 2 and 3."), ("assistant", "5")],
    ),
    (
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        "alpaca",
        [("user", "Add\n\n2 and 3"), ("assistant", "5")],
    ),
    (
        {"instruction": "Add", "input": "2 and 3", "response": "5"},
        "alpaca_response",
        [("user", "Add\n\n2 and 3"), ("assistant", "5")],
    ),
    (
        {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"},
        "qa",
        [("user", "What is 2+3?"), ("assistant", "2+3=5\n#### 5")],
    ),
    (
        {"conversations": ["Hi?", "Hello.", "Bye?", "Bye."], "source": "x"},
        "conversations",
        [("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?"), ("assistant", "Bye.")],
    ),
    (
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi?"},
                {"from": "gpt", "value": "Hello."},
            ]
        },
        "conversations",
        [("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello.")],
    ),
    (
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
        "messages",
        [("user", "Hi?"), ("assistant", "Hello.")],
    ),
    (
        {"id": "d1", "dialogue": "#Person1#: Hi.\n#Person2#: Hey.", "summary": "They greet.", "topic": "greeting"},
        "dialogsum",
        [("user", f"{DIALOGSUM_PROMPT}\n\n#Person1#: Hi.\n#Person2#: Hey."), ("assistant", "They greet.")],
    ),
]


@pytest.mark.parametrize(("record", "layout", "expected"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_layouts_to_canonical_messages(record, layout, expected):
    assert detect_layout(record) == layout
    messages = to_messages(record, layout)
    assert [(m["role"], m["content"]) for m in messages] == expected


def test_alpaca_with_both_output_and_response_prefers_output():
    record = {"instruction": "Say hi", "input": "", "output": "hi", "response": "hello"}
    assert detect_layout(record) == "alpaca"
    assert to_messages(record, "alpaca")[-1]["content"] == "hi"


def test_id_is_stable_under_whitespace_and_unicode_normalisation():
    a = [{"role": "user", "content": "Caf\u00e9 "}, {"role": "assistant", "content": "ok"}]
    b = [{"role": "user", "content": "  Cafe\u0301"}, {"role": "assistant", "content": "ok\n"}]
    assert example_id(a) == example_id(b)
    c = [{"role": "user", "content": "Cafe"}, {"role": "assistant", "content": "ok"}]
    assert example_id(a) != example_id(c)


def test_sentence_text_is_the_conversation_or_the_prompt_side_only():
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 2."},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Times 3?"},
        {"role": "assistant", "content": "12"},
    ]
    assert example_text(chat) == "Add 2 and 2.\n4\nTimes 3?\n12"
    assert example_text(chat, "instruction") == "Be brief.\nAdd 2 and 2.\nTimes 3?"
    with pytest.raises(ValueError, match=r"sentence_text: 'answer' is not one of \['conversation', 'instruction'\]"):
        example_text(chat, "answer")


def test_json_array_jsonl_and_parquet_give_the_same_rows(tmp_path):
    records = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    write_jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in records])
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet")
    results = [validate_file(tmp_path / name) for name in ("a.json", "a.jsonl", "a.parquet")]
    ids = [[row["pool_id"] for row in r.accepted] for r in results]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 5
    positions = [[row["position"] for row in r.accepted] for r in results]
    assert positions[1] == [1, 2, 3, 4, 5]  # JSONL: 1-based line numbers
    assert positions[0] == positions[2] == [0, 1, 2, 3, 4]  # array / parquet: 0-based index


def test_parquet_with_declared_mapping_keeps_other_columns_as_meta(tmp_path):
    rows = [{"prompt_text": "Name a colour.", "ctx": "", "reply": "Blue.", "quality": 0.9}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    result = validate_file(tmp_path / "m.parquet", mapping="prompt=prompt_text,response=reply,input=ctx")
    assert result.layout == "mapped" and len(result.accepted) == 1
    row = result.accepted[0]
    assert row["messages"] == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert json.loads(row["meta"]) == {"quality": 0.9}


def test_bad_mapping_spec_names_the_problem():
    with pytest.raises(ValueError, match="mapping"):
        FieldMapping.parse("prompt=a")
    with pytest.raises(ValueError, match="mapping"):
        FieldMapping.parse("prompt=a,response=b,bogus=c")


def test_jsonl_misnamed_as_json_is_read_line_by_line(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(
        path, [json.dumps({"question": "1+1?", "answer": "2"}), json.dumps({"question": "2+2?", "answer": "4"})]
    )
    assert [item.value["answer"] for item in read_items(path)] == ["2", "4"]


def test_verbatim_raw_line_and_meta_are_kept(tmp_path):
    line = '{"question": "1+1?",  "answer": "2", "difficulty": "easy"}'
    result = validate_file(write_jsonl(tmp_path / "q.jsonl", [line]))
    assert result.accepted[0]["raw"] == line
    assert json.loads(result.accepted[0]["meta"]) == {"difficulty": "easy"}
