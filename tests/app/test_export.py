"""``dsel export`` and the ``selection_export`` asset: a stored selection leaves dsel in rank
order, in the layout a trainer reads, with its lineage. Expected values come from the source
files and the state database, read here directly, and from LLaMA-Factory's documented
``dataset_info.json`` fields and role tags (hiyouga/LLaMA-Factory data/README.md)."""

from __future__ import annotations

import json
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest

from dsel_assets.app.cli import main
from dsel_assets.pipeline.code_location import build_definitions
from resources.home import DselHome
from resources.store import open_state

from ..helpers import write_jsonl
from ..s3 import s3_client

# --- the pool: three files of three tasks, several layouts ---

MATH_LINES = [  # JSON lines (alpaca), some written oddly on purpose: the export must give them back as they are
    '{"instruction": "Add 1 and 2.", "input": "", "output": "3", "task": "math"}',
    '{"instruction":"What is 2*3?","output":"6","task":"math"}',
    '{ "instruction" : "Halve 10." ,  "output" : "5", "task": "math" }',
    '{"task": "math", "instruction": "Caf\\u00e9 bill: 4+4?", "input": "", "output": "8"}',
    '{"instruction": "Write 7 in words.", "input": "", "output": "seven\u2028(line separator kept)", "task": "math"}',
    '{"instruction": "Square 3.", "input": "", "output": "9", "note": "caf\u00e9 \u2713", "task": "math"}',
    '{"instruction": "What is 10-4?", "input": "", "output": "6", "task": "math"}',
    '{"instruction": "Double 21.", "input": "", "output": "42", "task": "math"}',
]
CODE_ELEMENTS = [  # a pretty-printed JSON array
    {"instruction": "Print hello in Python.", "input": "", "output": "print('hello')", "task": "code"},
    {"instruction": "Sum a list.", "input": "xs = [1, 2]", "output": "sum(xs)", "task": "code"},
    {"instruction": "Reverse a string: café", "input": "", "output": "s[::-1]", "task": "code"},
]
CHAT_RECORDS = [  # chat messages (a file has one layout)
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        "task": "chat",
    },
    {
        "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
        "task": "chat",
    },
    {
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "Merci ✓"},
        ],
        "task": "chat",
    },
]
#: each chat record by its last user turn, as LLaMA-Factory should read it back: (system, turns)
CHAT_EXPECTED = {
    "2+2?": ("You are terse.", [("user", "Hi"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4")]),
    "Name a colour.": ("", [("user", "Name a colour."), ("assistant", "Blue.")]),
    "Thanks": ("Answer in French.", [("user", "Thanks"), ("assistant", "Merci ✓")]),
}

# LLaMA-Factory's documented dataset_info.json fields (data/README.md)
DATASET_INFO_FIELDS = {
    "hf_hub_url",
    "ms_hub_url",
    "script_url",
    "file_name",
    "file_sha1",
    "formatting",
    "ranking",
    "subset",
    "split",
    "folder",
    "num_samples",
    "columns",
    "tags",
}
COLUMN_FIELDS = {
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
}
TAG_FIELDS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}
TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A state home with the three files ingested and these selections: random @ 5 (seed 3),
    random @ 4 (selection seeds 0 and 1), random_in_task @ 100% for chat and @ 50 for code."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        home = DselHome(root / "home").ensure()
        mp.setenv("DSEL_HOME", str(home.root))
        mp.setenv("DSEL_MODEL", "tiny")
        data = root / "data"
        data.mkdir()
        write_jsonl(data / "math.jsonl", MATH_LINES)
        (data / "code.json").write_text(json.dumps(CODE_ELEMENTS, indent=2, ensure_ascii=False), encoding="utf-8")
        write_jsonl(data / "chat.jsonl", [json.dumps(r, ensure_ascii=False) for r in CHAT_RECORDS])
        assert main(["ingest", str(data), "--task", "auto"]) == 0
        with open_state(home.duckdb, read_only=True) as db:
            assert db.rows_matching("quarantine", ["batch"], {}).height == 0
            assert db.rows_matching("examples", ["pool_id"], {}).height == 8 + 3 + 3
        assert main(["select", "--method", "random", "--budget", "5", "--param", "seed=3"]) == 0
        assert main(["select", "--method", "random_in_task", "--target", "chat", "--budget", "100%"]) == 0
        assert main(["select", "--method", "random_in_task", "--target", "code", "--budget", "50"]) == 0
        defs = build_definitions(home, model="tiny")
        result = defs.resolve_job_def("curation_job").execute_in_process(
            instance=dg.DagsterInstance.get(),
            asset_selection=[dg.AssetKey("selection_random")],
            run_config={"ops": {"selection_random": {"config": {"budgets": ["4"], "seeds": [0, 1]}}}},
        )
        assert result.success
        yield SimpleNamespace(home=home, data=data, root=root)


def stored(home: DselHome, method: str, budget: str, seed: int | None = None) -> list[dict]:
    """The stored selection rows in rank order with their examples, read from the tables themselves
    (selections joined with examples and their batches here, not by the export's own query)."""
    match: dict[str, object] = {"method": method, "budget": budget}
    if seed is not None:
        match["selection_seed"] = seed
    selection = ["rank", "pool_id", "score", "pool_version", "mlflow_run_id", "selection_seed", "k", "config"]
    with open_state(home.duckdb, read_only=True) as db:
        selected = db.rows_matching("selections", selection, match)
        examples = db.rows_matching("examples", ["pool_id", "messages", "position", "task", "batch"], {})
        batches = db.rows_matching("batches", ["batch", "original_path"], {})
    rows = selected.join(examples, on="pool_id", how="inner").join(batches, on="batch", how="inner")
    rows = rows.sort("rank", maintain_order=True)
    return rows.select(*selection, "messages", "position", "task", "original_path").to_dicts()


def export(*argv: str) -> int:
    return main(["export", *argv])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_original_gives_back_each_jsonl_line_byte_for_byte(state, tmp_path):
    out = tmp_path / "original.jsonl"
    assert export("--method", "random", "--budget", "5", "--format", "original", "--out", str(out)) == 0
    source_lines = (state.data / "math.jsonl").read_bytes().split(b"\n")
    rows = stored(state.home, "random", "5")
    exported = out.read_bytes().split(b"\n")
    assert exported[-1] == b"" and len(exported) == len(rows) + 1  # one line per row, each ending in \n
    for row, line in zip(rows, exported, strict=False):
        if row["original_path"].endswith("math.jsonl"):
            assert line == source_lines[row["position"] - 1]  # positions are 1-based lines
    manifest = json.loads((tmp_path / "original.manifest.json").read_text(encoding="utf-8"))
    assert [r["pool_id"] for r in manifest["rows"]] == [r["pool_id"] for r in rows]
    assert [r["position"] for r in manifest["rows"]] == [r["position"] for r in rows]


def test_original_of_every_math_row_and_of_a_json_array(state, tmp_path):
    # a selection of every code row: the array's elements as their JSON text, one per line
    out = tmp_path / "code.jsonl"
    assert export("--method", "random_in_task", "--budget", "50", "--format", "original", "--out", str(out)) == 0
    rows = stored(state.home, "random_in_task", "50")
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == len(rows) == len(CODE_ELEMENTS)
    for row, line in zip(rows, lines, strict=True):
        element = CODE_ELEMENTS[row["position"]]  # 0-based element index
        assert json.loads(line) == element
        assert line == json.dumps(element, ensure_ascii=False)
    # every math line, whatever its layout, from the random selections that hold them
    source = (state.data / "math.jsonl").read_bytes().split(b"\n")
    for seed in (0, 1):
        out = tmp_path / f"r4_{seed}.jsonl"
        args = ["--method", "random", "--budget", "4", "--seed", str(seed), "--format", "original"]
        assert export(*args, "--out", str(out)) == 0
        for row, line in zip(stored(state.home, "random", "4", seed), out.read_bytes().split(b"\n"), strict=False):
            if row["original_path"].endswith("math.jsonl"):
                assert line == source[row["position"] - 1]


def test_messages_trains_two_steps_with_trl(state, tmp_path):
    trl = pytest.importorskip("trl", reason="trl is in the test extra: pip install -e '.[test]'")
    datasets = pytest.importorskip("datasets")
    from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama

    out = tmp_path / "chat.jsonl"
    assert export("--method", "random_in_task", "--budget", "100%", "--format", "messages", "--out", str(out)) == 0
    records = read_jsonl(out)
    rows = stored(state.home, "random_in_task", "100pct")
    assert [r["messages"] for r in records] == [[dict(m) for m in r["messages"]] for r in rows]
    assert {m["role"] for r in records for m in r["messages"]} == {"system", "user", "assistant"}

    tokenizer = load_tokenizer(resolve("tiny"))
    model = tiny_llama(tokenizer)
    dataset = datasets.load_dataset("json", data_files=str(out), split="train")
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=64,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def _check_entry(entry: dict, fmt: str, folder: Path, name: str) -> None:
    """An entry against LLaMA-Factory's documented fields; its file beside dataset_info.json."""
    assert set(entry) <= DATASET_INFO_FIELDS
    assert set(entry.get("columns", {})) <= COLUMN_FIELDS
    assert set(entry.get("tags", {})) <= TAG_FIELDS
    assert entry["formatting"] == fmt and entry["file_name"] == name
    assert (folder / entry["file_name"]).is_file()


def _sharegpt_turns(record: dict, entry: dict) -> tuple[str, list[tuple[str, str]]]:
    """What LLaMA-Factory's sharegpt reader makes of a record (system, [(role, content)]): a leading
    system_tag turn is the system prompt, then user_tag / assistant_tag alternate."""
    tags = TAG_DEFAULTS | entry.get("tags", {})
    turns = record[entry["columns"].get("messages", "conversations")]
    system = ""
    if tags.get("system_tag") and turns and turns[0][tags["role_tag"]] == tags["system_tag"]:
        system, turns = turns[0][tags["content_tag"]], turns[1:]
    out = []
    for i, turn in enumerate(turns):
        expected_tag = tags["user_tag"] if i % 2 == 0 else tags["assistant_tag"]
        assert turn[tags["role_tag"]] == expected_tag
        out.append(("user" if i % 2 == 0 else "assistant", turn[tags["content_tag"]]))
    return system, out


def _alpaca_turns(record: dict, entry: dict) -> tuple[str, list[tuple[str, str]]]:
    """What LLaMA-Factory's alpaca reader makes of a record: history pairs, then the prompt
    (instruction, and the query after a newline when there is one) and the response."""
    columns = {"prompt": "instruction", "query": "input", "response": "output"} | entry.get("columns", {})
    out = []
    for user, assistant in record.get(columns["history"], []) if "history" in columns else []:
        out += [("user", user), ("assistant", assistant)]
    prompt = "\n".join(p for p in (record[columns["prompt"]], record.get(columns["query"], "")) if p)
    out += [("user", prompt), ("assistant", record[columns["response"]])]
    system = record.get(columns["system"], "") if "system" in columns else ""
    return system, out


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca"])
def test_llama_factory_layouts_map_roles_and_history(state, tmp_path, fmt):
    out = tmp_path / f"chat_{fmt}.jsonl"
    assert export("--method", "random_in_task", "--budget", "100pct", "--format", fmt, "--out", str(out)) == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert list(info) == [f"chat_{fmt}"]
    entry = info[f"chat_{fmt}"]
    _check_entry(entry, fmt, tmp_path, out.name)
    records = read_jsonl(out)
    assert len(records) == len(CHAT_EXPECTED)
    read = _sharegpt_turns if fmt == "sharegpt" else _alpaca_turns
    seen = {}
    for record in records:
        system, turns = read(record, entry)
        seen[turns[-2][1]] = (system, turns)
    assert seen == CHAT_EXPECTED
    if fmt == "sharegpt":
        assert entry["tags"] == {**TAG_DEFAULTS, "system_tag": "system"}
        froms = {t["from"] for r in records for t in r["conversations"]}
        assert froms == {"system", "human", "gpt"}
    else:
        multi = next(r for r in records if r["instruction"] == "2+2?")
        assert multi["history"] == [["Hi", "Hello."]] and multi["system"] == "You are terse." and multi["input"] == ""
        assert entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    manifest = json.loads((tmp_path / f"chat_{fmt}.manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["system_turns"] == 2 and manifest["counts"]["system_turns_dropped"] == 0
    assert manifest["dataset_info"]["entry"] == entry

    # a second export into the same folder adds its entry and keeps the first
    other = tmp_path / "math.jsonl"
    assert export("--method", "random", "--budget", "5", "--format", fmt, "--out", str(other)) == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert list(info) == [f"chat_{fmt}", "math"] and info[f"chat_{fmt}"] == entry
    _check_entry(info["math"], fmt, tmp_path, "math.jsonl")


def test_manifest_records_the_lineage(state, tmp_path, capsys):
    out = tmp_path / "sel.jsonl"
    assert export("--method", "random", "--budget", "5", "--format", "messages", "--out", str(out)) == 0
    assert "5 rows" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "sel.manifest.json").read_text(encoding="utf-8"))
    rows = stored(state.home, "random", "5")
    assert (manifest["method"], manifest["budget"], manifest["selection_seed"]) == ("random", "5", 3)
    assert manifest["parameters"] == json.loads(rows[0]["config"]) == {"seed": 3}
    assert manifest["pool_version"] == rows[0]["pool_version"]
    assert manifest["selection_run_id"] == rows[0]["mlflow_run_id"]
    assert manifest["k"] == rows[0]["k"] == 5
    assert manifest["counts"]["rows"] == len(rows) == len(read_jsonl(out)) == 5
    assert manifest["counts"]["system_turns_dropped"] == 0
    assert [(r["rank"], r["pool_id"], r["score"]) for r in manifest["rows"]] == [
        (r["rank"], r["pool_id"], r["score"]) for r in rows
    ]
    assert [r["source_file"] for r in manifest["rows"]] == [r["original_path"] for r in rows]
    assert manifest["dsel_version"] == metadata.version("dsel")
    assert datetime.fromisoformat(manifest["exported_at"]).tzinfo is not None
    assert manifest["command"].startswith("dsel export --method random --budget 5 --format messages --out ")
    assert manifest["representation_settings"]["model"] == "tiny"
    assert manifest["model_hash"] is None  # random reads no representation
    assert manifest["selection_run"]["status"] == "FINISHED"
    assert {i["name"] for i in manifest["selection_run"]["inputs"]} == {"pool"}
    assert sum(s["rows"] for s in manifest["sources"]) == 5
    with open_state(state.home.duckdb, read_only=True) as db:
        sha = dict(db.rows_matching("batches", ["original_path", "sha256"], {}).iter_rows())
    assert all(s["file_sha256"] == sha[s["source_file"]] for s in manifest["sources"])


def test_seeds_pick_the_replicate(state, tmp_path, capsys):
    out = tmp_path / "r4.jsonl"
    assert export("--method", "random", "--budget", "4", "--format", "messages", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "[0, 1]" in err and "Traceback" not in err
    assert export("--method", "random", "--budget", "4", "--seed", "7", "--format", "messages", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "seed: 7" in err and "[0, 1]" in err
    assert not out.exists()
    for seed in (0, 1):
        out = tmp_path / f"r4_{seed}.parquet"
        args = ["--method", "random", "--budget", "4", "--seed", str(seed), "--format", "parquet", "--out", str(out)]
        assert export(*args) == 0
        manifest = json.loads((tmp_path / f"r4_{seed}.manifest.json").read_text(encoding="utf-8"))
        rows = stored(state.home, "random", "4", seed)
        assert manifest["selection_seed"] == seed and [r["pool_id"] for r in manifest["rows"]] == [
            r["pool_id"] for r in rows
        ]
        assert manifest["selection_run_id"] == rows[0]["mlflow_run_id"]


def test_parquet_and_hf_carry_messages_and_lineage_columns(state, tmp_path):
    import pyarrow.parquet as pq

    rows = stored(state.home, "random", "5")
    out = tmp_path / "sel.parquet"
    assert export("--method", "random", "--budget", "5", "--format", "parquet", "--out", str(out)) == 0
    table = pq.read_table(out)
    assert table.column_names[0] == "messages"
    assert {"pool_id", "rank", "score", "source_file", "position", "file_sha256", "method", "budget"} <= set(
        table.column_names
    )
    assert table.column("pool_id").to_pylist() == [r["pool_id"] for r in rows]
    assert table.column("rank").to_pylist() == [r["rank"] for r in rows]
    assert table.column("position").to_pylist() == [r["position"] for r in rows]
    assert table.column("messages").to_pylist() == [[dict(m) for m in r["messages"]] for r in rows]
    embedded = json.loads(table.schema.metadata[b"dsel_manifest"])
    assert embedded["selection_run_id"] == rows[0]["mlflow_run_id"] and embedded["format"] == "parquet"

    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "sel_hf"
    assert export("--method", "random", "--budget", "5", "--format", "hf", "--out", str(folder)) == 0
    dataset = datasets.load_from_disk(str(folder))
    assert dataset["pool_id"] == [r["pool_id"] for r in rows]
    assert dataset["messages"] == [[dict(m) for m in r["messages"]] for r in rows]
    described = json.loads(dataset.info.description)
    assert (described["method"], described["budget"], described["pool_version"]) == (
        "random",
        "5",
        rows[0]["pool_version"],
    )
    assert (tmp_path / "sel_hf.manifest.json").is_file()
    # --force replaces an earlier datasets export, never another folder
    assert export("--method", "random", "--budget", "5", "--format", "hf", "--out", str(folder)) == 2
    assert export("--method", "random", "--budget", "5", "--format", "hf", "--out", str(folder), "--force") == 0
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    assert export("--method", "random", "--budget", "5", "--format", "hf", "--out", str(plain), "--force") == 2
    assert (plain / "keep.txt").read_text() == "mine"


def test_target_is_checked_against_the_stored_task(state, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    base = ["--method", "random_in_task", "--budget", "100%", "--format", "messages", "--out", str(out)]
    assert export(*base, "--target", "code") == 2
    err = capsys.readouterr().err
    assert "'chat'" in err and "'code'" in err
    assert export(*base, "--target", "chat") == 0
    assert json.loads((tmp_path / "t.manifest.json").read_text())["target"] == "chat"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--method", "nope", "--budget", "5"], ["'nope'", "random", "random_in_task"]),
        (["--method", "round_robin@rds", "--budget", "5"], ["round_robin_rds", "random"]),
        (["--method", "round_robin@nope", "--budget", "5"], ["'nope'", "rds"]),
        (["--method", "random", "--budget", "7%"], ["'7%'", "['4', '5']"]),
        (["--method", "random", "--budget", "lots"], ["'lots'", "['4', '5']"]),
    ],
)
def test_unknown_names_are_clear_errors(state, tmp_path, capsys, args, named):
    out = tmp_path / "x.jsonl"
    assert export(*args, "--format", "messages", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsel: error:") and "Traceback" not in err
    for text in named:
        assert text in err
    assert not out.exists()


def test_unknown_format_is_an_argument_error(state, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        export("--method", "random", "--budget", "5", "--format", "csv", "--out", str(tmp_path / "x.csv"))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "'csv'" in err and "sharegpt" in err and "Traceback" not in err


def test_an_existing_out_is_kept_unless_forced(state, tmp_path, capsys):
    out = tmp_path / "mine.jsonl"
    out.write_text("precious\n")
    args = ["--method", "random", "--budget", "5", "--format", "messages", "--out", str(out)]
    assert export(*args) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert not (tmp_path / "mine.manifest.json").exists()
    assert export(*args, "--force") == 0
    assert len(read_jsonl(out)) == 5
    # the manifest and a LLaMA-Factory entry of the same name count as existing output too
    out.unlink()
    assert export(*args) == 2
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"sel": {"file_name": "other.json"}}))
    lf = ["--method", "random", "--budget", "5", "--format", "alpaca", "--out", str(folder / "sel.jsonl")]
    assert export(*lf) == 2
    assert json.loads((folder / "dataset_info.json").read_text()) == {"sel": {"file_name": "other.json"}}
    assert export(*lf, "--force") == 0
    assert json.loads((folder / "dataset_info.json").read_text())["sel"]["file_name"] == "sel.jsonl"


def test_home_after_the_command(state, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEL_HOME", str(state.home.root))  # restored after: --home sets it for the process
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "h.jsonl"
    argv = ["export", "--method", "random", "--budget", "5", "--format", "messages", "--out", str(out)]
    assert main([*argv, "--home", str(state.home.root)]) == 0
    assert len(read_jsonl(out)) == 5


def _materialize_export(home: DselHome, config: dict) -> dg.ExecuteInProcessResult:
    defs = build_definitions(home, model="tiny")
    return defs.resolve_job_def("curation_job").execute_in_process(
        instance=dg.DagsterInstance.get(),
        asset_selection=[dg.AssetKey("selection_export")],
        run_config={"ops": {"selection_export": {"config": config}}},
    )


def test_the_asset_exports_every_selection_through_the_artifact_store(state):
    from mlflow.tracking import MlflowClient

    result = _materialize_export(state.home, {"format": "sharegpt", "methods": ["random"]})
    assert result.success
    meta = result.asset_materializations_for_node("selection_export")[0].metadata
    assert meta["selections"].value == 3 and meta["rows"].value == 4 + 4 + 5
    root = state.home.root / "exports" / "sharegpt"
    folder = root / "random" / "5" / "seed3"
    records = read_jsonl(folder / "random_5_seed3.jsonl")
    rows = stored(state.home, "random", "5")
    assert len(records) == 5
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    assert [t["from"] for t in records[0]["conversations"]] == [roles[m["role"]] for m in rows[0]["messages"]]
    assert [t["value"] for t in records[0]["conversations"]] == [m["content"] for m in rows[0]["messages"]]
    manifest = json.loads((folder / "random_5_seed3.manifest.json").read_text(encoding="utf-8"))
    assert manifest["selection_run_id"] == rows[0]["mlflow_run_id"]
    assert [r["pool_id"] for r in manifest["rows"]] == [r["pool_id"] for r in rows]
    _check_entry(
        json.loads((folder / "dataset_info.json").read_text())["random_5_seed3"],
        "sharegpt",
        folder,
        "random_5_seed3.jsonl",
    )
    for seed in (0, 1):
        assert (root / "random" / "4" / f"seed{seed}" / f"random_4_seed{seed}.jsonl").is_file()
    index = json.loads((root / "index.json").read_text())
    assert {(e["method"], e["budget"], e["selection_seed"]) for e in index["exports"]} == {
        ("random", "4", 0),
        ("random", "4", 1),
        ("random", "5", 3),
    }
    run = MlflowClient(state.home.mlflow_uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.params["format"] == "sharegpt" and run.data.metrics["random.5.seed3.rows"] == 5
    assert run.data.tags["dagster.asset_key"] == "selection_export"


def test_the_asset_refuses_unknown_names(state):
    with pytest.raises(Exception, match="format"):
        _materialize_export(state.home, {"format": "csv"})
    with pytest.raises(Exception, match="nope"):
        _materialize_export(state.home, {"methods": ["nope"]})


def test_the_asset_writes_to_s3(state, s3_environ, monkeypatch, tmp_path):
    for name, value in s3_environ.items():
        monkeypatch.setenv(name, value)
    prefix = f"run-{tmp_path.name}"
    monkeypatch.setenv("DSEL_ARTIFACTS_URI", f"s3://dsel-test/{prefix}")
    monkeypatch.setenv("DSEL_ARTIFACT_CACHE", str(tmp_path / "cache"))
    result = _materialize_export(state.home, {"format": "parquet", "methods": ["random_in_task"], "budgets": ["50"]})
    assert result.success
    meta = result.asset_materializations_for_node("selection_export")[0].metadata
    assert meta["path"].value == f"s3://dsel-test/{prefix}/exports/parquet"
    listed = s3_client(s3_environ).list_objects_v2(Bucket="dsel-test", Prefix=prefix).get("Contents", [])
    keys = {o["Key"].removeprefix(f"{prefix}/") for o in listed if not o["Key"].endswith("/")}
    folder = "exports/parquet/random_in_task/50/seed0"
    assert {
        f"{folder}/random_in_task_50_seed0.parquet",
        f"{folder}/random_in_task_50_seed0.manifest.json",
        "exports/parquet/index.json",
    } <= keys
    body = s3_client(s3_environ).get_object(
        Bucket="dsel-test", Key=f"{prefix}/{folder}/random_in_task_50_seed0.manifest.json"
    )
    manifest = json.loads(body["Body"].read())
    assert manifest["path"] == f"s3://dsel-test/{prefix}/{folder}/random_in_task_50_seed0.parquet"
    assert manifest["counts"]["rows"] == len(CODE_ELEMENTS)


def test_the_model_hash_comes_from_what_the_selection_recorded(tmp_path):
    from dsel_assets.pipeline.export import model_identity

    with open_state(tmp_path / "state.duckdb") as db:
        db.migrate()
        db.record_warmup("w1", "models/warmup/w1", "v1", "smollm2", "abcd", {})
        db.ensure_score_table("loss_scores")
        score = pl.DataFrame({"pool_id": ["p1"], "model": ["tiny"], "model_hash": ["ef01"]})
        db.upsert_by_id("loss_scores", score)
        nothing = {"model": None, "model_hash": None, "from": None}
        assert model_identity(db, [{"name": "pool", "digest": "v1"}]) == nothing  # random: no model
        rds = [{"name": "rds_similarity_0123456789abcdef", "digest": "3"}]
        assert model_identity(db, rds)["model_hash"] == "0123456789abcdef"
        assert model_identity(db, [{"name": "selection_model", "digest": "9876"}])["model_hash"] == "9876"
        less = [{"name": "less_scores", "digest": "w1"}]
        assert model_identity(db, less) == {"model": "smollm2", "model_hash": "abcd", "from": "warmup w1"}
        influence = [{"name": "influence_d1024", "digest": "5"}]
        assert model_identity(db, influence, warmup="w1")["model_hash"] == "abcd"
        ifd = [{"name": "ifd", "digest": "loss_scores"}]
        assert model_identity(db, ifd) == {"model": "tiny", "model_hash": "ef01", "from": "table loss_scores"}
