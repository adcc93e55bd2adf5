"""Method documentation from the registry: one page per method under ``docs/methods/``, their
index, and the method table of the README's "Selection methods" section.

What the registry knows (family, inputs, parameters, reference) is generated between two
markers; everything outside them is hand-written and kept. A new method gets a page whose
hand-written part is a placeholder the docs test refuses, so it cannot ship undocumented.
``python -m dsel_assets.app.method_docs`` rewrites the generated parts; ``--check`` only reports
what is stale (exit 1).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from collections.abc import Iterable
from pathlib import Path

from dsel_assets.core.select import methods
from dsel_assets.core.select.registry import FAMILIES, MethodSpec
from dsel_assets.pipeline.catalog import randomness_summary

ROOT = Path(__file__).resolve().parents[2]  # the repository
DOCS = Path("docs/methods")
README = Path("README.md")
BEGIN = "<!-- BEGIN GENERATED from the method registry by `python -m dsel_assets.app.method_docs`; edit outside -->"
END = "<!-- END GENERATED -->"
SECTIONS = ("## What it optimises", "## Cost", "## Deviations from the reference")  # of every hand-written part
UNWRITTEN = "_Not written yet: " + ", ".join(h.removeprefix("## ") for h in SECTIONS) + "._"
#: the header every page's last section opens its table with: step, reference file:line, dsel, effect
DEVIATION_TABLE = "| step | reference"


def deviation_problems(name: str, written: str) -> list[str]:
    """What is wrong with the deviations section of a method page's hand-written part."""
    last = written.rpartition("\n## ")[2]
    if not last.startswith(SECTIONS[-1].removeprefix("## ")):
        return [f"{name}: its page does not end with '{SECTIONS[-1]}'"]
    if not any(line.startswith(DEVIATION_TABLE) for line in last.splitlines()):
        return [f"{name}: '{SECTIONS[-1]}' has no table ({DEVIATION_TABLE} | dsel | effect |)"]
    return []


INDEX_INTRO = "# Selection methods\n\nOne page per registered method.\n\n"


def _cell(value: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _needs(spec: MethodSpec) -> str:
    return ", ".join(f"`{need}`" for need in spec.needs) or "none"


def source_path(spec: MethodSpec) -> str:
    """The module that registers ``spec``, relative to the repository root."""
    return Path(inspect.getfile(inspect.unwrap(spec.select))).resolve().relative_to(ROOT).as_posix()


def _type(spec: MethodSpec, name: str, type_name: str) -> str:
    """The registry's type name, with the allowed values of a ``Literal`` spelled out."""
    hint = typing.get_type_hints(spec.config_cls)[name]
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(hint))
    return type_name


def method_block(spec: MethodSpec) -> str:
    """The generated part of a method's page."""
    parameters = spec.parameters()
    task = " --target TASK" if any(name == "task" for name, *_ in parameters) else ""
    facts = _table(
        ["", ""],
        [
            ["family", spec.family],
            ["needs", _needs(spec)],
            ["[selection randomness](../../README.md#selection-randomness)", randomness_summary(spec)],
            ["reference", spec.reference],
            ["code", f"[`{source_path(spec)}`](../../{source_path(spec)})"],
            ["run", f"`dsel select --method {spec.name} --budget 5%{task}`"],
        ],
    )
    if parameters:
        params = _table(
            ["parameter", "type", "default", "meaning"],
            (
                [f"`{name}`", _type(spec, name, type_name), f"`{default!r}`", help_]
                for name, type_name, default, help_ in parameters
            ),
        )
    else:
        params = "None."
    return f"# `{spec.name}`\n\n{spec.description}\n\n{facts}\n\nParameters (`--param name=value`):\n\n{params}"


def index_block(specs: dict[str, MethodSpec]) -> str:
    """The table of docs/methods/README.md: every method, linked, with its inputs."""
    return _table(
        ["method", "family", "needs", "what it does"],
        ([f"[`{s.name}`]({s.name}.md)", s.family, _needs(s), s.description] for s in _by_family(specs)),
    )


def readme_block(specs: dict[str, MethodSpec]) -> str:
    """The README's table: methods by family, each linked to its page."""
    rows = []
    for family in FAMILIES:
        names = [s.name for s in _by_family(specs) if s.family == family]
        if names:
            rows.append([family, ", ".join(f"[`{n}`]({DOCS.as_posix()}/{n}.md)" for n in names)])
    return _table(["family", "methods"], rows)


def _by_family(specs: dict[str, MethodSpec]) -> list[MethodSpec]:
    return sorted(specs.values(), key=lambda s: (FAMILIES.index(s.family), s.name))


def splice(text: str, block: str, where: str) -> str:
    """``text`` with what lies between the markers replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r"\n(?:.*?\n)?" + re.escape(END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{where}: expected one {BEGIN!r} ... {END!r} block")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def expected(root: Path = ROOT, specs: dict[str, MethodSpec] | None = None) -> dict[Path, str]:
    """Every generated file (relative path -> content) as it should read now: existing pages
    keep their hand-written parts; a missing page gets the placeholder."""
    specs = methods() if specs is None else specs
    out: dict[Path, str] = {}
    for name, spec in specs.items():
        path = DOCS / f"{name}.md"
        text = _read(root / path) or f"{BEGIN}\n{END}\n\n{UNWRITTEN}\n"
        out[path] = splice(text, method_block(spec), str(path))
    index = DOCS / "README.md"
    out[index] = splice(_read(root / index) or f"{INDEX_INTRO}{BEGIN}\n{END}\n", index_block(specs), str(index))
    out[README] = splice((root / README).read_text(encoding="utf-8"), readme_block(specs), str(README))
    return out


def stale(root: Path = ROOT, specs: dict[str, MethodSpec] | None = None) -> list[str]:
    """What the docs test and ``--check`` object to: generated parts out of date, pages of no
    registered method, links to pages of none, hand-written parts without their sections."""
    specs = methods() if specs is None else specs
    problems = [
        f"{path}: stale or missing; run python -m dsel_assets.app.method_docs"
        for path, text in expected(root, specs).items()
        if _read(root / path) != text
    ]
    for page in sorted((root / DOCS).glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([a-z0-9_]+)\.md\)", text):
            if target not in specs:
                problems.append(f"{DOCS / page.name}: links to {target}.md, which is no registered method")
        if page.stem == "README":
            continue
        if page.stem not in specs:
            problems.append(f"{DOCS / page.name}: no registered method {page.stem!r}")
        written = text.partition(END)[2]
        missing = [h for h in SECTIONS if h not in written]
        if missing:
            problems.append(f"{DOCS / page.name}: the hand-written part lacks {missing}")
        elif page.stem in specs:
            problems += [f"{DOCS / page.name}: {p}" for p in deviation_problems(page.stem, written)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsel_assets.app.method_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything is stale")
    args = parser.parse_args(argv)
    if not args.check:
        (ROOT / DOCS).mkdir(parents=True, exist_ok=True)
        for path, text in expected().items():
            if _read(ROOT / path) != text:
                (ROOT / path).write_text(text, encoding="utf-8")
                print(f"wrote {path}")
    problems = stale()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
