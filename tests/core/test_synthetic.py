"""The embedded default pool: deterministic, six checkable capabilities, labelled noise."""

import collections

from dsel_assets.core.data.schema import example_id
from dsel_assets.core.data.synthetic import CAPABILITIES, NOISE_KINDS, check_answer, extract_answer, generate


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(seed=3, per_capability=20).write(tmp_path / "a")
    b = generate(seed=3, per_capability=20).write(tmp_path / "b")
    c = generate(seed=4, per_capability=20).write(tmp_path / "c")
    assert a["pool"].read_bytes() == b["pool"].read_bytes()
    assert a["pool"].read_bytes() != c["pool"].read_bytes()


def test_capabilities_noise_and_checkable_answers():
    data = generate(seed=0, per_capability=100, noise_rate=0.2)
    assert len(CAPABILITIES) >= 6
    assert collections.Counter(r["task"] for r in data.pool) == {t: 100 for t in CAPABILITIES}
    noise = collections.Counter(r["noise"] for r in data.pool)
    assert set(noise) == {None, *NOISE_KINDS}
    assert 0.12 < sum(v for k, v in noise.items() if k) / len(data.pool) < 0.28
    for record in data.pool:
        reply = record["messages"][-1]["content"]
        correct = check_answer(reply, record["answer"])
        # clean rows and near-duplicates of clean rows are right; the other noise kinds are not
        assert correct == (record["noise"] in (None, "near_duplicate")), record


def test_query_and_eval_sets_are_clean_and_disjoint_from_the_pool():
    data = generate(seed=1, per_capability=50, queries_per_capability=8, eval_per_capability=30)
    ids = {
        name: {example_id(r["messages"]) for r in rows}
        for name, rows in (("pool", data.pool), ("q", data.queries), ("e", data.evals))
    }
    assert not ids["pool"] & ids["q"] and not ids["pool"] & ids["e"] and not ids["q"] & ids["e"]
    assert len(data.queries) == 8 * len(CAPABILITIES) and len(data.evals) == 30 * len(CAPABILITIES)
    assert all(check_answer(r["messages"][-1]["content"], r["answer"]) for r in data.queries + data.evals)


def test_answer_extraction():
    assert extract_answer("So 3 + 4 = 7. The answer is 7.") == "7"
    assert extract_answer("The answer is 2021-03-04.") == "2021-03-04"
    assert extract_answer("no final answer") is None
    assert check_answer("The answer is 1,  2, 3.", "1, 2, 3")
    assert not check_answer("The answer is 8.", "7")
