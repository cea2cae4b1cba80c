"""Dependencies run one way: core <- methods <- tasks <- runners (checked by parsing imports)."""
import ast
import subprocess
import sys

from conftest import ROOT

LAYERS = ["core", "methods", "tasks", "runners"]


def imported_packages(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


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
    code = ("import sys, runners.collect, core.schema, core.knobs, core.registry; "
            "print(sorted(m for m in ('torch', 'methods', 'tasks') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
