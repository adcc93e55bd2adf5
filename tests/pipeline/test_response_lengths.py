"""The response-length representation: the count matches a turn-by-turn reference encoding,
the per-batch asset stores it with its generated check passing, and a selection loads it by
its declared name."""

import json

import dagster as dg
import numpy as np

from dsel_assets.core.models.loading import load_tokenizer, resolve
from dsel_assets.core.models.templates import response_token_counts
from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.representations.lengths import response_lengths
from dsel_assets.pipeline.checks import batch_check
from dsel_assets.pipeline.names import pool_batches
from dsel_assets.pipeline.registry import LoadContext, load, score_kinds

from ..helpers import write_jsonl

CONVERSATIONS = [
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
    [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "one, two, three"},
        {"role": "user", "content": "And back?"},
        {"role": "assistant", "content": "three, two, one - and that is all of them."},
    ],
    [{"role": "user", "content": "Say nothing long."}, {"role": "assistant", "content": "Fine: a short reply."}],
]


def reference_counts(tokenizer) -> list[int]:
    """Each assistant turn encoded on its own, summed: user turns and the template never count."""
    return [
        sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in c if m["role"] == "assistant")
        for c in CONVERSATIONS
    ]


def test_response_tokens_count_the_assistant_turns_only():
    tokenizer = load_tokenizer(resolve("tiny"))
    counts = response_token_counts(tokenizer, CONVERSATIONS)
    assert counts == reference_counts(tokenizer) and counts[1] > counts[2] > counts[0] > 0
    assert response_token_counts(tokenizer, []) == []


def test_response_lengths_asset_stores_checks_and_loads_them(home, local_resources, tmp_path):
    store, path = (
        local_resources["store"],
        write_jsonl(tmp_path / "c.jsonl", [json.dumps({"messages": c}) for c in CONVERSATIONS]),
    )
    with store.session() as db:
        manifest, _ = db.register_batch(path, home.raw, source="c", task="chat")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    assets = [pool_batch, pool, response_lengths, batch_check("response_lengths")]
    result = dg.materialize(assets, partition_key=manifest.batch, resources=local_resources, instance=instance)
    assert result.success and [e.passed for e in result.get_asset_check_evaluations()] == [True]
    assert score_kinds()["length"].asset == "response_lengths"

    with store.session() as db:
        pool_ids = db.split_rows("pool", ("pool_id",), order=("position",))["pool_id"].to_list()
    lengths, ref = load(
        "response_length", LoadContext(local_resources["lance"], store, pool_ids, local_resources["grad_settings"])
    )
    tokenizer = local_resources["selection_model"].tokenizer()
    np.testing.assert_array_equal(lengths, reference_counts(tokenizer))
    assert ref.digest == "response_lengths"
