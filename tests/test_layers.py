"""Dependencies run one way: core <- methods <- tasks <- runners (checked by parsing imports)."""
import ast
import subprocess
import sys

from conftest import ROOT

LAYERS = ["core", "methods", "tasks", "runners"]


def imported_packages(path):
    """The attnbench layers a file imports (``attnbench.methods.base`` and ``from attnbench import
    methods`` are both ``methods``; relative imports are banned by ruff, so every import is absolute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "attnbench" and len(parts) > 1:
                    yield parts[1]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            parts = node.module.split(".")
            if parts[0] == "attnbench":
                if len(parts) > 1:
                    yield parts[1]
                else:
                    yield from (alias.name for alias in node.names)


def test_no_layer_imports_a_layer_above_it():
    bad = []
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in sorted((ROOT / layer).rglob("*.py")):
            for pkg in imported_packages(path):
                if pkg in above:
                    bad.append(f"{path.relative_to(ROOT)} imports {pkg}")
    assert not bad, bad


def test_core_needs_no_torch_for_the_schema_and_collect_loads_no_registry():
    code = ("import sys, attnbench.runners.collect, attnbench.core.schema, attnbench.core.knobs, attnbench.core.registry; "
            "print(sorted(m for m in ('torch', 'attnbench.methods', 'attnbench.tasks') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
