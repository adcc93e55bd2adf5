"""Data Whisperer (docs/methods/data_whisperer.md, gszfwsb/Data-Whisperer): score pool examples by how much
they help the model answer target queries in context, crediting each demonstration by the
attention the query section pays to it.

Each round takes ``n_d`` pool demonstrations (a seeded partition of the pool, so every
example is a demonstration at least once) and ``n_q`` target queries. The demonstrations
form a shared prefix (run once; its KV cache is reused); each query is appended in turn,
answered greedily, and the answer scored against the reference (exact match for short
references, ROUGE-L F otherwise). Demonstration ``j``'s weight is the attention from the
query tokens to its own tokens (its message contents; the reference likewise leaves its
instruction section out) at one middle layer, summed over heads, divided by
``|D_j| * |queries|`` and normalised over the demonstrations; where no demonstration draws any,
the weights are uniform. Each demonstration
accumulates ``sum_q metric_q * w_j`` and a count (float32-safe: float64 here); its score is
sum / count. Deviation: the reference puts all queries in one prompt and parses a joint
answer; one continuation per query over the shared prefix gives the same attention
quantity without parsing a multi-answer generation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import numpy as np

from .loading import cache_keyword, returned_cache
from .templates import render_chat


def demo_weights(attention_mass: np.ndarray, demo_lengths: np.ndarray, n_queries: int) -> np.ndarray:
    """Per demonstration: attention mass / (|D_j| * |queries|), normalised to sum to 1."""
    raw = np.asarray(attention_mass, dtype=np.float64) / (np.asarray(demo_lengths) * max(n_queries, 1))
    total = raw.sum()
    return raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))


def _normalise(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def answer_metric(prediction: str, reference: str, short_words: int = 5) -> float:
    """Short references (<= ``short_words`` words): exact match after lower-casing and
    dropping punctuation, of the whole prediction or of its last words (a reply that ends
    on the answer, e.g. "... the answer is 42."); longer references: ROUGE-L F."""
    ref, pred = _normalise(reference), _normalise(prediction)
    if len(ref) <= short_words:
        return float(bool(ref) and (pred == ref or pred[-len(ref) :] == ref))
    from ..rouge import rouge_l

    return rouge_l([prediction], [reference])[0]


def demo_spans(tokenizer, demos: list[list[dict]]) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """Token ids of the demonstration prefix (every demonstration in the chat template) and, per
    demonstration, the [start, end) token ranges of its own message contents.

    The system prompt the template adds, role headers and end-of-turn markers belong to no
    demonstration, so the attention they draw (the first token is an attention sink) is
    credited to nobody; spans that started at 0 handed all of it to the first demonstration.
    Contents are located by rendering the template with a marker in place of each content, so
    a content that also occurs in a header or the system prompt cannot be mistaken for it."""
    messages = [m for d in demos for m in d]
    skeleton = render_chat(tokenizer, [{**m, "content": f"\x00{i}\x00"} for i, m in enumerate(messages)])
    pieces = re.split(r"\x00(\d+)\x00", skeleton)  # literal, index, literal, index, ..., literal
    text, chars = pieces[0], {}
    for index, literal in zip(pieces[1::2], pieces[2::2], strict=True):
        content = messages[int(index)]["content"]
        chars[int(index)] = (len(text), len(text) + len(content))
        text += content + literal
    if text != render_chat(tokenizer, messages) or len(chars) != len(messages):
        raise ValueError("template: the chat template does not insert message contents verbatim")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    spans, first = [], 0
    for demo in demos:
        ranges = []
        for start, end in (chars[i] for i in range(first, first + len(demo))):
            inside = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
            if inside:
                ranges.append((inside[0], inside[-1] + 1))
        spans.append(ranges)
        first += len(demo)
    return encoded["input_ids"], spans


def attention_mass(attention: np.ndarray, spans: list[list[tuple[int, int]]]) -> np.ndarray:
    """Per demonstration: the attention (rows: query tokens, columns: key positions) that falls
    on its own tokens."""
    return np.array([sum(float(attention[:, s:e].sum()) for s, e in ranges) for ranges in spans])


#: The reference pruner's attention layer by model name; any other model gets REFERENCE_OTHER_LAYER.
REFERENCE_LAYERS = {
    "Meta-Llama-3-8B-Instruct": 13,
    "Mistral-Nemo-Instruct-2407": 13,
    "Qwen2.5-3B-Instruct": 16,
    "Qwen2.5-7B-Instruct": 16,
    "Mistral-7B-Instruct-v0.2": 10,
}
REFERENCE_OTHER_LAYER = 11
#: The reference's ``--max_token``: prompt and answer together; an uncapped answer stops there.
REFERENCE_MAX_TOKENS = 8192


def reference_layer(model_name: str, n_layers: int) -> int:
    """The layer the reference reads for ``model_name`` (a hub id or a folder: its last part is
    matched), never past the model's last layer."""
    name = model_name.rstrip("/").rsplit("/", 1)[-1]
    return min(REFERENCE_LAYERS.get(name, REFERENCE_OTHER_LAYER), n_layers - 1)


def whisperer_scores(
    model,
    tokenizer,
    pool: list[list[dict]],
    queries: list[list[dict]],
    n_demos: int = 5,
    n_queries: int = 3,
    layer: int | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    on_round: Callable[[int, int], None] | None = None,
    on_answer: Callable[[int, bool], None] | None = None,
) -> np.ndarray:
    """Score per pool example (NaN only if it never served, which cannot happen here).

    ``model`` must run eager attention (attention weights are read at ``layer``, default the
    middle one). ``max_new_tokens`` caps each greedy answer; 0 lets it run to the end of turn or
    until prompt and answer reach :data:`REFERENCE_MAX_TOKENS`, as the reference generates.
    ``on_answer(tokens, ended)`` is told each answer's length and whether it ended (end of turn)
    rather than being cut at the limit."""
    import torch

    if not queries:
        raise ValueError("queries: Data Whisperer needs a target query set (split 'query')")
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    layer = model.config.num_hidden_layers // 2 if layer is None else layer
    order = rng.permutation(len(pool))
    rounds = [order[i : i + n_demos] for i in range(0, len(order), n_demos)]
    if len(rounds[-1]) < n_demos and len(pool) >= n_demos:  # fill the last prompt; all still served once
        extra = rng.choice(np.setdiff1d(order, rounds[-1]), n_demos - len(rounds[-1]), replace=False)
        rounds[-1] = np.concatenate([rounds[-1], extra])
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    cache_key = cache_keyword(model)  # once: read on every generated token
    totals = np.zeros(len(pool), dtype=np.float64)
    counts = np.zeros(len(pool), dtype=np.float64)
    with torch.no_grad():
        for r, members in enumerate(rounds):
            demos = [pool[i] for i in members]
            prefix, spans = demo_spans(tokenizer, demos)
            cache = returned_cache(model(torch.tensor([prefix], device=device), use_cache=True))
            mass = np.zeros(len(members))
            metrics = []
            for qi in rng.choice(len(queries), min(n_queries, len(queries)), replace=False):
                query = queries[qi]
                context = [m for d in demos for m in d] + query[:-1]
                text = render_chat(tokenizer, context, generation_prompt=True)
                suffix = tokenizer(text, add_special_tokens=False)["input_ids"][len(prefix) :]
                out = model(
                    torch.tensor([suffix], device=device),
                    **{cache_key: copy.deepcopy(cache)},
                    use_cache=True,
                    output_attentions=True,
                )
                attn = out.attentions[layer][0].float().sum(0)  # heads summed: [suffix, prefix + suffix]
                mass += attention_mass(attn.cpu().numpy(), spans)
                generated, past, token = [], returned_cache(out), out.logits[0, -1].argmax()
                limit = max_new_tokens if max_new_tokens > 0 else REFERENCE_MAX_TOKENS - len(prefix) - len(suffix)
                while int(token) not in stop and len(generated) < limit:
                    generated.append(int(token))
                    step = model(token.view(1, 1), **{cache_key: past}, use_cache=True)
                    past, token = returned_cache(step), step.logits[0, -1].argmax()
                if on_answer is not None:
                    on_answer(len(generated), int(token) in stop)
                prediction = tokenizer.decode(generated, skip_special_tokens=True)
                metrics.append(answer_metric(prediction, query[-1]["content"]))
            lengths = np.array([max(sum(e - s for s, e in ranges), 1) for ranges in spans])  # empty: mass 0
            weights = demo_weights(mass, lengths, len(metrics))
            totals[members] += sum(metrics) * weights
            counts[members] += 1
            if on_round is not None:
                on_round(r + 1, len(rounds))
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
