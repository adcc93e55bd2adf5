"""Loss scores, both IFDs and uncertainty on the tiny model, checked against computations written
out in the tests (log-softmax over the logits, Cherry_LLM's steps); the numbers on the method pages (docs/methods/)."""

import copy
import math

import numpy as np
import pytest
import torch

from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
from dsel_assets.core.models.scoring import greedy_answers, ifd_scores, score_examples
from tests.helpers import strict_cpu_fp32


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


def token_log_probs(model, ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..len(ids)-1, by log-softmax over the model's logits
    (float64), independently of the scoring code."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return logits[:-1].log_softmax(-1)


def hand_turn(model, tokenizer, messages: list[dict], turn: int) -> dict[str, np.ndarray]:
    """Per token of the assistant turn ``messages[turn]``, by hand: its loss after the chat-templated
    context, its loss after a lone BOS, and the conditioned distribution's entropy, top-1 log-prob
    and top-1 - top-2 margin."""
    context = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    answer = tokenizer(messages[turn]["content"], add_special_tokens=False)["input_ids"]
    logp = token_log_probs(model, context_ids + answer)[len(context_ids) - 1 :]
    alone = token_log_probs(model, [tokenizer.bos_token_id, *answer])
    target = torch.tensor(answer)
    top2 = logp.topk(2, dim=-1).values
    return {
        "cond": -logp[torch.arange(len(answer)), target].numpy(),
        "uncond": -alone[torch.arange(len(answer)), target].numpy(),
        "entropy": -(logp.exp() * logp).sum(-1).numpy(),
        "log_top1": top2[:, 0].numpy(),
        "margin": (top2[:, 0].exp() - top2[:, 1].exp()).numpy(),
    }


def test_losses_and_uncertainty_match_a_hand_computation(tiny, monkeypatch):
    strict_cpu_fp32(monkeypatch)  # the hand computation is strict fp32
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}]
    hand = hand_turn(model, tokenizer, messages, 1)
    cond, uncond = hand["cond"].mean(), hand["uncond"].mean()
    ((_, scores),) = list(score_examples(model, tokenizer, [("x", messages)]))
    assert scores.response_tokens == len(hand["cond"]) == 5
    assert scores.loss_conditioned == pytest.approx(cond, rel=1e-5)
    assert scores.loss_unconditioned == pytest.approx(uncond, rel=1e-5)
    assert scores.ifd_loss_ratio == pytest.approx(cond / uncond, rel=1e-5)
    assert scores.ifd_ppl_ratio == pytest.approx(math.exp(cond - uncond), rel=1e-5)
    assert scores.mean_entropy == pytest.approx(hand["entropy"].mean(), rel=1e-5)
    assert scores.least_confidence == pytest.approx(-hand["log_top1"].sum(), rel=1e-5)
    assert scores.mean_margin == pytest.approx(hand["margin"].mean(), rel=1e-4, abs=1e-9)
    assert scores.min_margin == pytest.approx(hand["margin"].min(), rel=1e-4, abs=1e-9)


def test_multi_turn_is_token_weighted_and_truncation_is_excluded_with_reason(tiny, monkeypatch):
    strict_cpu_fp32(monkeypatch)  # the hand computation is strict fp32
    model, tokenizer = tiny
    two = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, friend."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    turns = [hand_turn(model, tokenizer, two, 1), hand_turn(model, tokenizer, two, 3)]
    ((_, scores),) = list(score_examples(model, tokenizer, [("x", two)]))
    # every response token counts once: the mean over the tokens of both turns, not of the turn means
    assert scores.loss_conditioned == pytest.approx(np.concatenate([t["cond"] for t in turns]).mean(), rel=1e-5)
    assert scores.loss_unconditioned == pytest.approx(np.concatenate([t["uncond"] for t in turns]).mean(), rel=1e-5)
    ((_, cut),) = list(score_examples(model, tokenizer, [("y", two)], max_length=5))
    assert math.isnan(cut.ifd_loss_ratio) and "max_length=5" in cut.reason


ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{}\n\n### Response:"
)


def cherry_reference(model, tokenizer, instruction: str, output: str, max_length: int) -> tuple[float, float]:
    """(L(A|Q), L(A)) of one record by Cherry_LLM's steps (data_analysis.py --prompt alpaca --mod cherry, then
    data_by_IFD.py): token losses of the whole encoded text, sliced to the answer; NaNs where it skips a record."""

    def answer_losses(text: str, span: str, limit: int) -> np.ndarray:
        ids = tokenizer.encode(text, truncation=True, max_length=limit)
        losses = -token_log_probs(model, ids)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
        start = len(tokenizer.encode(text[: text.rfind(span)]))
        return losses[start - 1 : len(ids) - 1]

    prompt = ALPACA.format(instruction)
    instruct_len = len(tokenizer.encode(prompt, truncation=True, max_length=max_length))
    if max_length - instruct_len <= 0:
        return math.nan, math.nan
    alone = answer_losses("### Response:" + output, output, max_length - instruct_len + 4)
    conditioned = answer_losses(prompt + output, output, max_length)
    if len(alone) <= 0 or len(conditioned) <= 0 or instruct_len + len(alone) > max_length:
        return math.nan, math.nan
    return float(conditioned.mean()), float(alone.mean())


def test_alpaca_template_reproduces_the_cherry_reference_scoring(tiny, monkeypatch):
    strict_cpu_fp32(monkeypatch)  # the reference scores in strict fp32; so must we, to match it to 1e-5
    model, tokenizer = tiny
    records = [
        ("Name a colour.", "Blue is a colour.", 512),
        ("Give three fruits.", "1. Apple\n2. Pear\n3. Plum", 512),
        ("Write a long list.", " ".join(f"item{i}," for i in range(60)), 80),  # the reference skips it
        ("Say hi.", "Hi!", 40),
    ]
    items = [
        (str(i), [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for i, (q, a, _) in enumerate(records)
    ]
    for (key, messages), (question, answer, max_length) in zip(items, records, strict=True):
        cond, uncond = cherry_reference(model, tokenizer, question, answer, max_length)
        ((_, got),) = list(score_examples(model, tokenizer, [(key, messages)], max_length, template="alpaca"))
        if math.isnan(cond):
            assert math.isnan(got.ifd_loss_ratio) and "alpaca template" in got.reason
            continue
        assert got.loss_conditioned == pytest.approx(cond, rel=1e-5)
        assert got.loss_unconditioned == pytest.approx(uncond, rel=1e-5)
        assert got.ifd_loss_ratio == pytest.approx(cond / uncond, rel=1e-5)
    assert sum(math.isnan(cherry_reference(model, tokenizer, *r)[0]) for r in records) == 1
    # the chat template scores differently (another prompt, and L(A) after a lone BOS)
    chat = dict(score_examples(model, tokenizer, items[:1]))
    alpaca = dict(score_examples(model, tokenizer, items[:1], template="alpaca"))
    assert chat["0"].loss_unconditioned != pytest.approx(alpaca["0"].loss_unconditioned, rel=1e-3)
    with pytest.raises(ValueError, match="template"):
        list(score_examples(model, tokenizer, items[:1], template="vicuna"))
    with pytest.raises(ValueError, match="chat template only"):
        list(score_examples(model, tokenizer, items[:1], response="greedy", template="alpaca"))


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
    # as pooled (DiverseEvol's k-center space): the same directions, the hidden states' own lengths
    raw = model_embeddings(model, tokenizer, convs, "mean", batch_size=2, normalise=False)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(raw / norms, a, atol=1e-5)
    assert np.abs(norms - 1).max() > 0.1
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


def test_nuggets_anchors_score_their_last_answer_and_leave_out_those_too_long_to_pair(tiny):
    from dsel_assets.core.models.nuggets import prepare_anchors

    _, tokenizer = tiny
    two_turns = qa("Go north.", "Done.") + qa("And back?", "Back home now, after a long walk.")
    last_turn = qa("And back?", "Back home now, after a long walk.")
    multi, single = prepare_anchors(tokenizer, [two_turns, last_turn], 512)
    # the scored tokens are the last assistant turn's, the same number in both renderings (the
    # second user turn and the headers before the answer are not scored)
    assert multi.n_answer == single.n_answer
    assert multi.zero_shot_ids[-multi.n_answer :] == single.zero_shot_ids[-single.n_answer :]
    long = qa("Tell me everything. " * 40, "Fine.")
    kept = prepare_anchors(tokenizer, [long, last_turn], 128)
    assert [a.messages for a in kept] == [last_turn]  # the long one would leave no room for a demonstration
    with pytest.raises(ValueError, match="none of 1 fits in half of max_length=128"):
        prepare_anchors(tokenizer, [long], 128)


def test_data_whisperer_weights_metric_and_determinism(tiny):
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


def qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_data_whisperer_spans_cover_only_each_demonstrations_own_tokens(tiny):
    from dsel_assets.core.models.data_whisperer import attention_mass, demo_spans

    _, tokenizer = tiny
    demos = [qa(f"What is {i} plus {i}?", f"It is {2 * i}.") for i in range(3)]
    ids, spans = demo_spans(tokenizer, demos)
    # SmolLM2's template written out: system header, then per message <|im_start|>role\n content <|im_end|>\n
    pieces, expected, at = [SYSTEM], [], 0
    for demo in demos:
        pieces[-1] += "<|im_start|>user\n"
        pieces += [demo[0]["content"], "<|im_end|>\n<|im_start|>assistant\n", demo[1]["content"], "<|im_end|>\n"]
    for i, piece in enumerate(pieces):
        n = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if i % 2:  # a content piece
            expected.append((at, at + n))
        at += n
    assert len(ids) == at and spans == [expected[0:2], expected[2:4], expected[4:6]]
    assert spans[0][0][0] == 24  # 21 system-header tokens and "<|im_start|>user\n" belong to no demonstration
    for demo, ranges in zip(demos, spans, strict=True):
        assert [tokenizer.decode(ids[s:e]) for s, e in ranges] == [m["content"] for m in demo]
    # all the query's attention on the system header: no demonstration is credited
    attention = np.zeros((4, len(ids) + 4))
    attention[:, :21] = 1 / 21
    np.testing.assert_array_equal(attention_mass(attention, spans), [0.0, 0.0, 0.0])
    # the spans this replaces started the first demonstration at token 0 and handed it all of it
    old = [[(0, spans[0][-1][1])], [(spans[0][-1][1], spans[1][-1][1])], [(spans[1][-1][1], spans[2][-1][1])]]
    np.testing.assert_allclose(attention_mass(attention, old), [4.0, 0.0, 0.0])


class AttentionStub(torch.nn.Module):
    """A causal LM stand-in with known behaviour: greedy answers are always ``answer`` then EOS,
    and every query token attends only to the positions holding one of ``marks`` (else to
    position 0, the start of the system header)."""

    def __init__(self, vocab: int, answer: list[int], eos: int, marks: set[int]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"num_hidden_layers": 2})()
        self.vocab, self.answer, self.eos, self.marks = vocab, answer, eos, marks

    def forward(self, input_ids, past_key_values=None, use_cache=True, output_attentions=False):
        state = copy.deepcopy(past_key_values) or {"ids": [], "reply_from": None}
        new = input_ids[0].tolist()
        if past_key_values is not None and len(new) > 1:  # a query appended to the demonstrations
            state["reply_from"] = len(state["ids"]) + len(new)
        state["ids"] += new
        ids = state["ids"]
        weights = torch.tensor([float(t in self.marks) for t in ids])
        if weights.sum() == 0:
            weights[0] = 1.0
        attention = (weights / weights.sum()).expand(1, 1, len(new), len(ids))
        logits = torch.zeros(1, len(new), self.vocab)
        if state["reply_from"] is not None:
            step = len(ids) - state["reply_from"]
            logits[0, -1, self.answer[step] if step < len(self.answer) else self.eos] = 1.0
        return type("Out", (), {"logits": logits, "past_key_values": state, "attentions": (attention,) * 2})()


def test_data_whisperer_scores_on_a_model_whose_attention_and_answers_are_known(tiny):
    """Three demonstrations, one round, two queries: the model answers 42 to both (exact match
    1 for the query whose reference is 42, 0 for the other: sum of metrics 1). All attention on
    the one demonstration that mentions a zebra: it gets weight 1 and score 1, the others 0,
    wherever it sits. All attention on the system header: no demonstration is singled out
    (uniform 1/3), where the old spans gave the whole credit to whichever example came first."""
    from dsel_assets.core.models.data_whisperer import whisperer_scores

    _, tokenizer = tiny
    zebra = set(tokenizer("zebra", add_special_tokens=False)["input_ids"])
    pool = [qa("What is 1 plus 1?", "It is 2."), qa("What is 2 plus 2?", "It is 4."), qa("Name it.", "zebra")]
    queries = [qa("What is 6 times 7?", "42"), qa("What is 3 plus 4?", "7")]
    for other in pool[:2]:
        assert not zebra & set(tokenizer(other[0]["content"] + other[1]["content"])["input_ids"])
    answer = tokenizer("42", add_special_tokens=False)["input_ids"]
    for seed in (0, 1, 2):  # the zebra example at different positions in the prompt
        stub = AttentionStub(len(tokenizer), answer, tokenizer.eos_token_id, zebra)
        scores = whisperer_scores(stub, tokenizer, pool, queries, n_demos=3, n_queries=2, seed=seed)
        np.testing.assert_allclose(scores, [0.0, 0.0, 1.0])
        header = AttentionStub(len(tokenizer), answer, tokenizer.eos_token_id, set())
        scores = whisperer_scores(header, tokenizer, pool, queries, n_demos=3, n_queries=2, seed=seed)
        np.testing.assert_allclose(scores, [1 / 3] * 3)


def test_data_whisperer_uncapped_answers_are_graded_whole_and_the_reference_layer_table(tiny):
    """The stub answers one query with its reference, 48 words: capped at 32 new tokens the
    answer is graded on its start (ROUGE-L below 1), uncapped (0, the reference's rule) it is
    exact, and the zebra demonstration, which draws all the attention, gets the whole metric."""
    from dsel_assets.core.models.data_whisperer import reference_layer, whisperer_scores

    _, tokenizer = tiny
    zebra = set(tokenizer("zebra", add_special_tokens=False)["input_ids"])
    pool = [qa("What is 1 plus 1?", "It is 2."), qa("Name it.", "zebra")]
    reference = " ".join(f"word{i}" for i in range(48))
    answer = tokenizer(reference, add_special_tokens=False)["input_ids"]
    assert len(answer) > 32
    queries = [qa("Say the words.", reference)]
    scores, answers = {}, {}
    for cap in (32, 0, len(answer)):
        stub = AttentionStub(len(tokenizer), answer, tokenizer.eos_token_id, zebra)
        answers[cap] = []
        told = answers[cap]
        scores[cap] = whisperer_scores(
            stub,
            tokenizer,
            pool,
            queries,
            2,
            1,
            max_new_tokens=cap,
            on_answer=lambda n, end, t=told: t.append((n, end)),
        )
    np.testing.assert_allclose(scores[0], [0.0, 1.0])
    assert scores[32][0] == 0.0 and 0.0 < scores[32][1] < 1.0
    # each answer's length and whether it ended: cut at 32; whole and ended uncapped, and at a
    # cap of exactly its length (the end of turn comes next)
    whole = [(len(answer), True)]
    assert answers == {32: [(32, False)], 0: whole, len(answer): whole}
    # the reference's table, matched on the last part of a hub id or folder; 11 for any other model
    assert reference_layer("meta-llama/Meta-Llama-3-8B-Instruct", 32) == 13
    assert reference_layer("/models/Qwen2.5-7B-Instruct/", 28) == 16
    assert reference_layer("mistralai/Mistral-7B-Instruct-v0.2", 32) == 10
    assert reference_layer("smollm2", 30) == 11
    assert reference_layer("tiny", 2) == 1  # never past the model's last layer


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
    # clusters of fewer than per_cluster members are taken whole (the reference's rule) ...
    pair = np.array([[0.0, 0.0], [0.0, 0.01], [9.0, 9.0], [9.0, 9.01], [9.0, 9.02]], dtype=np.float32)
    values = np.array([3.0, 5.0, 1.0, 2.0, 3.0])
    rows, cluster = pre_experience_sample(pair, values, n_clusters=2, per_cluster=10)
    assert rows.tolist() == [0, 1, 2, 3, 4]
    # ... and a two-member cluster, none of it inside its interpolated band, still gives one
    rows, cluster = pre_experience_sample(pair, values, n_clusters=2, per_cluster=2)
    # the pair (3, 5): band [3.5, 4.5] is empty, the member nearest the median 4 is the first, row 0;
    # the triple (1, 2, 3): band [1.5, 2.5] holds row 3 alone
    assert rows.tolist() == [0, 3] and len(set(cluster[rows].tolist())) == 2
    with pytest.raises(ValueError, match="per_cluster"):
        pre_experience_sample(embeddings, perplexity, per_cluster=0)


def test_bf16_scoring_stays_close_to_strict_fp32(tiny, monkeypatch):
    """Where the CPU multiplies bf16 fast, scoring runs under bf16 autocast by default; its
    losses and IFD stay within 2% of strict fp32 (the hand-computed path above)."""
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no fast bf16: scoring is strict fp32 anyway")
    model, tokenizer = tiny
    items = [
        (str(i), [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for i, (q, a) in enumerate([("Name a colour.", "Blue is a colour."), ("Count to three.", "One, two, three.")])
    ]
    fast = dict(score_examples(model, tokenizer, items))
    strict_cpu_fp32(monkeypatch)
    strict = dict(score_examples(model, tokenizer, items))
    for key in strict:
        for field in ("loss_conditioned", "loss_unconditioned", "ifd_loss_ratio"):
            assert getattr(fast[key], field) == pytest.approx(getattr(strict[key], field), rel=0.02)
        assert fast[key].loss_conditioned != strict[key].loss_conditioned  # bf16 did run
