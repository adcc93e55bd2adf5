"""Loss scores, both IFDs and uncertainty on the tiny model; the numbers of METHODS.md 4."""

import math

import numpy as np
import pytest
import torch

from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
from dsel_assets.core.models.scoring import ifd_scores, score_examples, turn_inputs
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
