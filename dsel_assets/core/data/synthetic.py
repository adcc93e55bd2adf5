"""The embedded default: a seeded synthetic multi-capability pool with labelled noise.

Six capabilities, each with a programmatically checkable answer. Every assistant reply
ends with ``The answer is X.`` so :func:`check_answer` can grade a generation. A fraction
of the pool carries known noise (wrong answer, truncated reply, near-duplicate, off-topic
reply), recorded in the ``noise`` field so a selection's noise rate can be measured.
Query sets (few examples per capability, for targeted methods) and held-out eval sets are
disjoint from the pool and from each other.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NOISE_KINDS = ("wrong_answer", "truncated", "near_duplicate", "off_topic")

_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun"]
_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "shells"]
_WORDS = ["river", "planet", "garden", "silver", "window", "rocket", "forest", "candle", "marble"]
_OFF_TOPIC = [
    "I love sunny days at the beach, especially with a good book.",
    "Cats are wonderful pets because they are independent and curious.",
    "The history of the printing press is a fascinating subject.",
    "My favourite recipe is a simple tomato soup with fresh basil.",
]


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(1, 9)
    answer = a + b - c
    q = f"{name} has {a} {item}, buys {b} more and gives {c} away. How many {item} does {name} have now?"
    work = f"{a} + {b} = {a + b}, then {a + b} - {c} = {answer}."
    return q, str(answer), work


def _string_transform(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS) + rng.choice(_WORDS)
    kind = rng.choice(["reverse", "uppercase", "vowels"])
    if kind == "reverse":
        return f"Reverse the string '{word}'.", word[::-1], f"Reading '{word}' backwards gives {word[::-1]}."
    if kind == "uppercase":
        return f"Convert '{word}' to upper case.", word.upper(), "Each letter becomes a capital."
    count = sum(ch in "aeiou" for ch in word)
    return f"How many vowels are in '{word}'?", str(count), f"The vowels of '{word}' number {count}."


_UNITS = [
    ("kilometres", "metres", 1000),
    ("metres", "centimetres", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("litres", "millilitres", 1000),
]


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    big, small, factor = rng.choice(_UNITS)
    value = rng.randint(2, 95)
    answer = value * factor
    return (
        f"Convert {value} {big} to {small}.",
        str(answer),
        f"One of {big} is {factor} {small}, so {value} x {factor} = {answer}.",
    )


def _list_sorting(rng: random.Random) -> tuple[str, str, str]:
    values = rng.sample(range(1, 100), rng.randint(4, 7))
    order = rng.choice(["ascending", "descending"])
    result = sorted(values, reverse=order == "descending")
    answer = ", ".join(map(str, result))
    return (
        f"Sort these numbers in {order} order: {', '.join(map(str, values))}.",
        answer,
        f"In {order} order they are {answer}.",
    )


def _date_arithmetic(rng: random.Random) -> tuple[str, str, str]:
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2000))
    days = rng.randint(3, 120)
    end = start + dt.timedelta(days=days)
    q = f"What date is {days} days after {start.isoformat()}? Answer as YYYY-MM-DD."
    return q, end.isoformat(), f"Adding {days} days to {start.isoformat()} gives {end.isoformat()}."


def _code_eval(rng: random.Random) -> tuple[str, str, str]:
    a, b, n = rng.randint(1, 12), rng.randint(1, 12), rng.randint(2, 5)
    kind = rng.choice(["loop", "expr", "list"])
    if kind == "loop":
        code, value = f"total = 0\nfor i in range({n}):\n    total += {a}\nprint(total)", a * n
    elif kind == "expr":
        code, value = f"print(({a} + {b}) * {n})", (a + b) * n
    else:
        code, value = f"xs = [{a}, {b}, {n}]\nprint(max(xs) - min(xs))", max(a, b, n) - min(a, b, n)
    return f"What does this Python code print?\n\n{code}", str(value), "Tracing the code step by step."


CAPABILITIES: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "arithmetic": _arithmetic,
    "string_transform": _string_transform,
    "unit_conversion": _unit_conversion,
    "list_sorting": _list_sorting,
    "date_arithmetic": _date_arithmetic,
    "code_eval": _code_eval,
}


def extract_answer(response: str) -> str | None:
    """The text after the last ``answer is`` of a reply, without the final period."""
    index = response.lower().rfind("answer is")
    if index < 0:
        return None
    return response[index + len("answer is") :].strip().rstrip(".").strip() or None


def check_answer(response: str, answer: str) -> bool:
    """Exact match of the extracted final answer (whitespace-insensitive)."""
    got = extract_answer(response)
    return got is not None and " ".join(got.split()) == " ".join(answer.split())


def _record(task: str, question: str, answer: str, work: str, noise: str | None = None) -> dict:
    reply = f"{work} The answer is {answer}."
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
        "task": task,
        "answer": answer,
        "noise": noise,
    }


def _wrong(answer: str, rng: random.Random) -> str:
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 7]))
    return answer[::-1] if answer[::-1] != answer else answer + "x"


@dataclass
class SyntheticSet:
    pool: list[dict]
    queries: list[dict]
    evals: list[dict]

    def write(self, directory: Path) -> dict[str, Path]:
        """Write ``pool.jsonl``, ``queries.jsonl`` and ``eval.jsonl``; returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, rows in (("pool", self.pool), ("queries", self.queries), ("eval", self.evals)):
            path = directory / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            paths[name] = path
        return paths


def generate(
    seed: int = 0,
    per_capability: int = 100,
    queries_per_capability: int = 8,
    eval_per_capability: int = 40,
    noise_rate: float = 0.2,
) -> SyntheticSet:
    """Deterministic synthetic pool + query + eval sets (same seed, same bytes)."""
    if not 0 <= noise_rate < 1:
        raise ValueError(f"noise_rate: must be in [0, 1), got {noise_rate}")
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh(make: Callable[[random.Random], tuple[str, str, str]]) -> tuple[str, str, str]:
        for _ in range(1000):
            q, a, w = make(rng)
            if q not in seen:
                seen.add(q)
                return q, a, w
        raise RuntimeError("synthetic generator ran out of distinct questions")

    pool, queries, evals = [], [], []
    for task, make in CAPABILITIES.items():
        clean: list[dict] = []
        for _ in range(per_capability):
            q, a, w = fresh(make)
            roll = rng.random()
            kind = NOISE_KINDS[int(rng.random() * len(NOISE_KINDS))] if roll < noise_rate else None
            if kind == "near_duplicate" and not clean:
                kind = None
            if kind is None:
                rec = _record(task, q, a, w)
                clean.append(rec)
            elif kind == "wrong_answer":
                rec = _record(task, q, _wrong(a, rng), w, kind)
                rec["answer"] = a
            elif kind == "truncated":
                rec = _record(task, q, a, w, kind)
                reply = rec["messages"][1]["content"]
                rec["messages"][1]["content"] = reply[: max(8, len(reply) // 3)].rstrip()
            elif kind == "near_duplicate":
                base = rng.choice(clean)
                rec = json.loads(json.dumps(base))
                rec["messages"][0]["content"] = "Please answer: " + rec["messages"][0]["content"]
                rec["noise"] = kind
            else:
                rec = _record(task, q, a, w, kind)
                rec["messages"][1]["content"] = rng.choice(_OFF_TOPIC)
            pool.append(rec)
        queries += [_record(task, *fresh(make)) for _ in range(queries_per_capability)]
        evals += [_record(task, *fresh(make)) for _ in range(eval_per_capability)]
    rng.shuffle(pool)
    return SyntheticSet(pool=pool, queries=queries, evals=evals)
