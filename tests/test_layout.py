"""The house's plan holds: no import cycle among lib's modules, and the CLI and the demo
start without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The lib modules `path` imports when it is imported (not inside functions, not
    under TYPE_CHECKING), each with the packages that importing it runs."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    return found


def test_no_import_cycle_in_lib():
    files = {module_name(p): p for p in (ROOT / "lib").rglob("*.py")}
    graph = {m: top_level_imports(p, set(files)) - {m} for m, p in files.items()}
    # a module imports its package first: that edge is Python's, not a cycle we wrote
    for m in graph:
        graph[m] -= {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_cli_and_the_demo_start_without_torch():
    code = (
        "import sys, batch.cli, demo.app, lib\n"
        "heavy = sorted({'torch', 'umap', 'faiss'} & set(sys.modules))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip() == "[]"


LONGEST = 60  # lines: a function the next engineer reads on one screen


def test_no_function_is_longer_than_a_screen():
    too_long = []
    for folder in ("lib", "batch", "demo"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        too_long.append(f"{where} {node.name} ({lines} lines)")
    assert not too_long, "longer than a screen: " + "; ".join(too_long)
