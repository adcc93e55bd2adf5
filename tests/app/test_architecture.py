"""Who reads the environment: the CLI, the resources and the deployment builder do; the core,
the store and the pipeline below its code location take settings as arguments."""

import ast
from pathlib import Path

import pytest

import dsel_assets

PACKAGE = Path(dsel_assets.__file__).parent
#: the deployment builder: the code location and its executor read the deployment's settings
DEPLOYMENT = {"pipeline/code_location.py", "pipeline/deployment.py"}


def environment_reads(module: Path) -> list[int]:
    """Lines of ``module`` that read an environment variable (``os.environ.get``,
    ``os.environ[...]``, ``os.getenv``); setting a library's default is not reading."""
    lines = []
    for node in ast.walk(ast.parse(module.read_text())):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and (node.func.attr == "getenv" or (node.func.attr == "get" and _environ(node.func.value))):
            lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _environ(node.value):
            lines.append(node.lineno)
    return lines


def _environ(node: ast.AST) -> bool:
    return ast.unparse(node).endswith("environ")


@pytest.mark.parametrize("layer", ["core", "store", "pipeline"])
def test_the_lower_layers_read_no_environment(layer):
    readers = [
        f"{module.relative_to(PACKAGE)}:{line}"
        for module in sorted((PACKAGE / layer).rglob("*.py"))
        if str(module.relative_to(PACKAGE)) not in DEPLOYMENT
        for line in environment_reads(module)
    ]
    assert readers == []


def test_the_scan_finds_each_way_of_reading(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\na = os.environ.get('A')\nb = os.environ['B']\nc = os.getenv('C')\n"
        "os.environ.setdefault('D', '1')\nos.environ['E'] = '1'\n"
    )
    assert environment_reads(module) == [2, 3, 4]
