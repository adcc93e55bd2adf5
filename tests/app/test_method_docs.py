"""docs/methods/ and the README's method table against the registry: a page per method, no
page without a method, generated parts current, hand-written parts present and kept."""

import pytest

from dsel_assets.app import method_docs
from dsel_assets.app.method_docs import (
    BEGIN,
    DOCS,
    END,
    README,
    ROOT,
    SECTIONS,
    deviation_problems,
    expected,
    stale,
)
from dsel_assets.core.select import get, methods

NAMES = sorted(methods())
FIX = "run `python -m dsel_assets.app.method_docs`"


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_method_has_a_current_page(name):
    page = ROOT / DOCS / f"{name}.md"
    assert page.exists(), f"{page.relative_to(ROOT)}: missing; {FIX} and write its hand-written part"
    text = page.read_text(encoding="utf-8")
    assert text == expected()[DOCS / f"{name}.md"], f"{page.relative_to(ROOT)}: generated part stale; {FIX}"
    written = text.partition(END)[2]
    assert all(s in written for s in SECTIONS), f"{page.relative_to(ROOT)}: hand-written part missing"
    assert deviation_problems(name, written) == []


def test_no_page_names_a_method_that_does_not_exist():
    pages = {p.stem for p in (ROOT / DOCS).glob("*.md")} - {"README"}
    assert pages <= set(NAMES), f"pages without a registered method: {sorted(pages - set(NAMES))}"
    assert not [p for p in stale() if "no registered method" in p]


def test_readme_table_and_index_come_from_the_registry():
    current = expected()
    for path in (README, DOCS / "README.md"):
        assert (ROOT / path).read_text(encoding="utf-8") == current[path], f"{path}: stale; {FIX}"
    table = method_docs.readme_block(methods())
    assert all(f"[`{name}`](docs/methods/{name}.md)" in table for name in NAMES)
    assert stale() == []


@pytest.fixture()
def tree(tmp_path):
    """A repository with one documented method, 'random', and a README section."""
    (tmp_path / DOCS).mkdir(parents=True)
    (tmp_path / README).write_text(f"# dsel\n\n## Selection methods\n\n{BEGIN}\nold\n{END}\n\nAfter.\n")
    written = (
        "\n\n## What it optimises\n\nNothing.\n\n## Cost\n\nO(N).\n\n## Deviations from the reference\n\n"
        "| step | reference (file:line) | dsel | effect |\n|---|---|---|---|\n| draw | r.py:1 | same | none |\n"
    )
    (tmp_path / DOCS / "random.md").write_text(f"{BEGIN}\n# stale title\n{END}{written}")
    return tmp_path, {"random": get("random")}, written


def test_regeneration_rewrites_only_the_generated_parts(tree):
    root, specs, written = tree
    out = expected(root, specs)
    assert out[DOCS / "random.md"] == f"{BEGIN}\n{method_docs.method_block(specs['random'])}\n{END}{written}"
    assert out[README].startswith("# dsel\n\n## Selection methods\n\n") and out[README].endswith(f"{END}\n\nAfter.\n")
    assert "[`random`](docs/methods/random.md)" in out[README]
    assert f"{DOCS / 'random.md'}: stale or missing; run python -m dsel_assets.app.method_docs" in stale(root, specs)
    for path, text in out.items():
        (root / path).write_text(text)
    assert stale(root, specs) == []


def test_missing_orphan_and_unwritten_pages_are_reported(tree):
    root, specs, _ = tree
    for path, text in expected(root, specs).items():
        (root / path).write_text(text)
    (root / DOCS / "retired_method.md").write_text(f"{BEGIN}\n{END}\nSee [random](random.md) and [gone](gone.md).\n")
    specs = {**specs, "kmq": get("kmq")}
    problems = stale(root, specs)
    assert f"{DOCS / 'kmq.md'}: stale or missing; run python -m dsel_assets.app.method_docs" in problems
    assert f"{DOCS / 'retired_method.md'}: no registered method 'retired_method'" in problems
    assert f"{DOCS / 'retired_method.md'}: links to gone.md, which is no registered method" in problems
    (root / DOCS / "kmq.md").write_text(expected(root, specs)[DOCS / "kmq.md"])  # the placeholder page
    assert f"{DOCS / 'kmq.md'}: the hand-written part lacks {list(SECTIONS)}" in stale(root, specs)


def test_every_page_must_end_with_its_deviation_table(tree):
    root, specs, _ = tree
    specs = {**specs, "round_robin": get("round_robin")}
    prose = "\n\n## What it optimises\n\nTurns.\n\n## Cost\n\nO(N).\n\n## Deviations from the reference\n\nNone.\n"
    (root / DOCS / "round_robin.md").write_text(f"{BEGIN}\n{END}{prose}")
    for path, text in expected(root, specs).items():
        (root / path).write_text(text)
    assert f"{DOCS / 'round_robin.md'}: round_robin: '## Deviations from the reference' has no table" in " ".join(
        stale(root, specs)
    )
    table = "| step | reference (file:line) | dsel | effect |\n|---|---|---|---|\n| turns | x.py:1 | same | none |\n"
    (root / DOCS / "round_robin.md").write_text(expected(root, specs)[DOCS / "round_robin.md"] + table)
    assert stale(root, specs) == []
    (root / DOCS / "round_robin.md").write_text(f"{BEGIN}\n{END}{prose.replace('reference', 'paper')}")
    assert f"{DOCS / 'round_robin.md'}: the hand-written part lacks ['## Deviations from the reference']" in " ".join(
        stale(root, specs)
    )


def test_a_page_without_markers_is_refused(tree):
    root, specs, _ = tree
    (root / DOCS / "random.md").write_text("# random\n\nNo markers.\n")
    with pytest.raises(ValueError, match="docs/methods/random.md: expected one"):
        expected(root, specs)
