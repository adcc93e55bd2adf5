"""Loss scores, both IFDs and uncertainty on the tiny model; the numbers of METHODS.md 4."""

import copy
import math

import numpy as np
import pytest
import torch

from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
from dsel_assets.core.models.scoring import greedy_answers, ifd_scores, score_examples, turn_inputs
from dsel_assets.core.models.sft import collate, per_example_loss


def test_ifd_numbers():
    assert ifd_scores(1.2, 1.5)[0] == pytest.approx(0.8)
    a, b = ifd_scores(0.5, 1.0)[1], ifd_scores(2.0, 2.6)[1]
    assert a == pytest.approx(0.607, abs=1e-3) and b == pytest.approx(0.549, abs=1e-3)
    # the two IFDs order these two examples oppositely
    assert (ifd_scores(0.5, 1.0)[0] < ifd_scores(2.0, 2.6)[0]) and a > b
    cherry, superfiltering, reason = ifd_scores(0.4, 0.0)
    assert math.isnan(cherry) and "L(A) <= 0" in reason and superfiltering == pytest.approx(math.exp(0.4))


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer(resolve("tiny"))
    return tiny_llama(tokenizer).eval(), tokenizer


def test_losses_match_a_hand_computation_and_cover_the_same_tokens(tiny):
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}]
    (pair,) = turn_inputs(tokenizer, messages, 512)
    answer = tokenizer("Blue is a colour.", add_special_tokens=False)["input_ids"]
    assert pair.conditioned.n_response == pair.unconditioned.n_response == len(answer)
    with torch.no_grad():
        cond = per_example_loss(model, collate([pair.conditioned], 0)).item()
        uncond = per_example_loss(model, collate([pair.unconditioned], 0)).item()
    ((_, scores),) = list(score_examples(model, tokenizer, [("x", messages)]))
    assert scores.loss_conditioned == pytest.approx(cond, rel=1e-5)
    assert scores.loss_unconditioned == pytest.approx(uncond, rel=1e-5)
    assert scores.ifd_loss_ratio == pytest.approx(cond / uncond, rel=1e-5)
    assert scores.ifd_ppl_ratio == pytest.approx(math.exp(cond - uncond), rel=1e-5)
    assert scores.response_tokens == len(answer)
    assert 0 <= scores.min_margin <= scores.mean_margin <= 1
    assert 0 < scores.mean_entropy <= math.log(len(tokenizer)) + 1e-3
    assert scores.least_confidence > 0


def test_multi_turn_is_token_weighted_and_truncation_is_excluded_with_reason(tiny):
    model, tokenizer = tiny
    two = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, friend."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    pairs = turn_inputs(tokenizer, two, 512)
    assert len(pairs) == 2
    with torch.no_grad():
        losses = [per_example_loss(model, collate([p.conditioned], 0)).item() for p in pairs]
    counts = [p.conditioned.n_response for p in pairs]
    ((_, scores),) = list(score_examples(model, tokenizer, [("x", two)]))
    assert scores.loss_conditioned == pytest.approx(np.dot(losses, counts) / sum(counts), rel=1e-5)
    ((_, cut),) = list(score_examples(model, tokenizer, [("y", two)], max_length=5))
    assert math.isnan(cut.ifd_loss_ratio) and "max_length=5" in cut.reason


def test_batching_does_not_change_scores(tiny):
    from dsel_assets.core.data.synthetic import generate

    model, tokenizer = tiny
    items = [(str(i), r["messages"]) for i, r in enumerate(generate(seed=3, per_capability=2).pool)]
    one = dict(score_examples(model, tokenizer, items, batch_size=1))
    many = dict(score_examples(model, tokenizer, items, batch_size=5))
    for key in one:
        assert one[key].ifd_loss_ratio == pytest.approx(many[key].ifd_loss_ratio, rel=1e-4)
        assert one[key].min_margin == pytest.approx(many[key].min_margin, abs=1e-5)


def test_uncertainty_on_the_greedy_generation(tiny):
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}]
    ((reply,),) = greedy_answers(model, tokenizer, [messages], max_new_tokens=6)
    assert 0 < len(reply) <= 6 and tokenizer.eos_token_id not in reply
    ((_, greedy),) = list(score_examples(model, tokenizer, [("x", messages)], response="greedy", max_new_tokens=6))
    assert greedy.response_tokens == len(reply) and greedy.reason == ""
    # every scored token is the model's top-1 choice: its loss is -log p(top1), summed = least confidence
    assert greedy.loss_conditioned * greedy.response_tokens == pytest.approx(greedy.least_confidence, rel=1e-4)
    ((_, reference),) = list(score_examples(model, tokenizer, [("x", messages)]))
    assert reference.loss_conditioned * reference.response_tokens > reference.least_confidence
    with pytest.raises(ValueError, match="response"):
        list(score_examples(model, tokenizer, [("x", messages)], response="sampled"))


def test_model_embedding_poolings(tiny):
    from dsel_assets.core.models.model_embeddings import model_embeddings, pool_hidden

    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(pool_hidden(hidden, mask, "mean"), hidden[:, :3].mean(1))
    weighted = (hidden[0, 0] * 1 + hidden[0, 1] * 2 + hidden[0, 2] * 3) / 6
    torch.testing.assert_close(pool_hidden(hidden, mask, "position_weighted")[0], weighted)
    torch.testing.assert_close(pool_hidden(hidden, mask, "last_token")[0], hidden[0, 2])
    model, tokenizer = tiny
    convs = [
        [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Answer."}] for i in range(5)
    ]
    a = model_embeddings(model, tokenizer, convs, "mean", batch_size=2)
    b = model_embeddings(model, tokenizer, convs, "mean", batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batching and padding do not change an embedding
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden(hidden, mask, "max")


def test_learning_percentage_definition_and_training(tiny):
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.models.learning_percentage import compute_learning_percentages, learning_percentage
    from dsel_assets.core.models.warmup import WarmupConfig

    lp, reasons = learning_percentage(np.array([[4.0, 3.0, 2.5, 1.0], [2.0, 1.0, 3.0, 2.0]]))
    np.testing.assert_allclose(lp[0], [1 / 3, 0.5 / 3, 1.5 / 3])
    assert np.isnan(lp[1]).all() and "P_0 == P_n" in reasons[1] and reasons[0] == ""
    _, tokenizer = tiny
    convs = [r["messages"] for r in generate(seed=4, per_capability=2).pool]
    p, lp, reasons = compute_learning_percentages(
        tiny_llama(tokenizer), tokenizer, convs, WarmupConfig(epochs=2, lr=3e-3, batch_size=4, max_length=128)
    )
    assert p.shape == (len(convs), 3) and lp.shape == (len(convs), 2)
    assert np.median(p[:, -1]) < np.median(p[:, 0])  # training on the pool lowers its perplexity
    defined = np.isfinite(lp).all(axis=1)
    np.testing.assert_allclose(lp[defined].sum(axis=1), 1.0, atol=1e-9)  # LP(1) + ... + LP(n) = 1


def test_nuggets_cached_batched_equals_the_naive_loop(tiny):
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.models.nuggets import (
        golden_scores,
        one_shot_cached,
        one_shot_naive,
        prepare_anchors,
        zero_shot,
    )

    model, tokenizer = tiny
    data = generate(seed=5, per_capability=2)
    anchors = prepare_anchors(tokenizer, [r["messages"] for r in data.evals[:7]], 512)
    candidates = [r["messages"] for r in data.pool[:4]]
    cached, reasons = one_shot_cached(model, tokenizer, candidates, anchors, batch_size=3)
    naive = one_shot_naive(model, tokenizer, candidates, anchors)
    np.testing.assert_allclose(cached, naive, atol=1e-4, rtol=1e-5)
    lp0 = zero_shot(model, anchors)
    gs = golden_scores(cached, lp0)
    np.testing.assert_array_equal(gs, golden_scores(naive, lp0))
    assert all(r == "" for r in reasons) and np.all((gs * 7) == np.round(gs * 7))  # multiples of 1/|A|
    too_long, why = one_shot_cached(model, tokenizer, candidates[:1], anchors, max_length=20)
    assert np.isnan(too_long).all() and "max_length=20" in why[0]


def test_data_whisperer_weights_metric_and_scores(tiny):
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.models.data_whisperer import answer_metric, demo_weights, whisperer_scores

    np.testing.assert_allclose(
        demo_weights(np.array([0.02, 0.01, 0.01, 0.04, 0.02]), np.ones(5), 1), [0.2, 0.1, 0.1, 0.4, 0.2]
    )
    np.testing.assert_allclose(demo_weights(np.array([4.0, 1.0]), np.array([4, 1]), 2), [0.5, 0.5])
    assert answer_metric("So the answer is 42.", "42") == 1.0 and answer_metric("43", "42") == 0.0
    assert 0 < answer_metric("the cat sat on a mat today", "the cat sat on the mat and slept well") < 1
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    data = generate(seed=6, per_capability=2)
    pool = [r["messages"] for r in data.pool[:11]]
    queries = [r["messages"] for r in data.queries[:4]]
    scores = whisperer_scores(model, tokenizer, pool, queries, n_demos=5, n_queries=2, max_new_tokens=4)
    assert scores.shape == (11,) and np.isfinite(scores).all()  # every example served as a demonstration
    again = whisperer_scores(model, tokenizer, pool, queries, n_demos=5, n_queries=2, max_new_tokens=4)
    np.testing.assert_array_equal(scores, again)


def test_pre_experience_sample_takes_the_middle_perplexity_band_of_each_cluster():
    from dsel_assets.core.models.pre_experience import pre_experience_sample

    rng = np.random.default_rng(0)
    # two far-apart clusters of 20; perplexity 1..20 within each; one row without a perplexity
    embeddings = np.concatenate([rng.normal(0, 0.01, (20, 4)), rng.normal(10, 0.01, (20, 4))]).astype(np.float32)
    perplexity = np.concatenate([np.arange(1.0, 21.0), np.arange(1.0, 21.0)[::-1]])
    perplexity[0] = np.nan
    rows, cluster = pre_experience_sample(embeddings, perplexity, n_clusters=2, per_cluster=4)
    assert cluster[0] == -1 and len(set(cluster[1:20])) == 1 and set(cluster[1:20]).isdisjoint(cluster[20:])
    # cluster one: perplexity 2..20, band [6.5, 15.5] = 7..15 (9 rows); evenly spaced 4 of them: 7, 10, 12, 15
    # cluster two: 1..20, band [5.75, 15.25] = 6..15 (10 rows): 6, 9, 12, 15
    assert sorted(perplexity[rows[rows < 20]].tolist()) == [7.0, 10.0, 12.0, 15.0]
    assert sorted(perplexity[rows[rows >= 20]].tolist()) == [6.0, 9.0, 12.0, 15.0]
    everything, _ = pre_experience_sample(embeddings, perplexity, n_clusters=2, per_cluster=10)
    assert len(everything) == 19  # a band smaller than per_cluster is taken whole
    # a two-member cluster has no member inside its interpolated band: it gives one anyway
    pair = np.array([[0.0, 0.0], [0.0, 0.01], [9.0, 9.0], [9.0, 9.01], [9.0, 9.02]], dtype=np.float32)
    rows, cluster = pre_experience_sample(pair, np.array([3.0, 5.0, 1.0, 2.0, 3.0]), n_clusters=2, per_cluster=10)
    assert len(set(cluster[rows].tolist())) == 2 and len(rows) == 2
    with pytest.raises(ValueError, match="per_cluster"):
        pre_experience_sample(embeddings, perplexity, per_cluster=0)
