"""The shape of the house, checked: no import cycle and no upward arrow between packages, the World kept out of
generation and text, training reaching generation and evaluation through one hook, files and functions of a
readable length, and code that speaks of the code.

Every `import` of every module gives an edge: at the top, inside a function (a lazy import still couples two
modules both ways) and under `if TYPE_CHECKING:` (a type names the module it comes from). A cycle is reported as
the chain of modules that closes it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chronotope"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the chronotope modules it imports}; `from a import b` points at a.b when b is a module."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .a import b
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        edges &= set(modules)
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with an explicit path)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_the_walk_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = import_graph()
    assert "chronotope.pipeline.pipeline" in graph["chronotope.pipeline"]  # the walk sees the package's imports
    assert "chronotope.pipeline.rollout" in graph["chronotope.pipeline.pipeline"]  # `from package import module`


def test_no_import_cycle_inside_chronotope() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Packages from the bottom up: a module may import its own package and any below it, never one above. The World is
# a data source (beside the models), text and generation know a vocabulary only through text/vocabulary.py.
LAYERS = [
    {"atomic", "config", "weights", "video", "mp4", "sizes", "outputs", "request", "cost", "spelling"},
    {"data"},
    {"world", "vae", "dit", "diffusion", "text"},
    {"pipeline"},
    {"bench"},
    {"train"},
    {"serve"},
    {"cli"},
]
SEPARATE = {("pipeline", "world"), ("text", "world")}  # (importer, imported): never, though the layers allow it
TRAIN_HOOK = "chronotope.train.evaluate"  # the one module of train/ that imports pipeline/ or bench/


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package {package!r} is in no layer of tests/test_architecture.py LAYERS: place it")


def arrows(graph: dict[str, set[str]]):
    for module, targets in graph.items():
        for target in targets:
            if module != "chronotope" and "chronotope" not in (module, target):
                yield module, target, package_of(module), package_of(target)


def test_no_upward_arrow() -> None:
    up = sorted(f"{m} -> {t}" for m, t, a, b in arrows(import_graph()) if layer_of(b) > layer_of(a))
    assert not up, "imports of a higher layer:\n" + "\n".join(up)


def test_generation_and_text_do_not_import_the_world() -> None:
    bad = sorted(f"{m} -> {t}" for m, t, a, b in arrows(import_graph()) if (a, b) in SEPARATE)
    assert not bad, "generation and text read a vocabulary through text/vocabulary.py:\n" + "\n".join(bad)


def test_training_reaches_generation_through_one_hook() -> None:
    bad = sorted(f"{m} -> {t}" for m, t, a, b in arrows(import_graph())
                 if a == "train" and b in ("pipeline", "bench") and m != TRAIN_HOOK)
    assert not bad, f"train/ imports pipeline/ and bench/ only in {TRAIN_HOOK}:\n" + "\n".join(bad)


LONG_FILE, MAX_LONG_FILES = 400, 3
LONG_FUNCTION, MAX_LONG_FUNCTIONS = 80, 2


def test_files_and_functions_read_in_a_sitting() -> None:
    files = sorted((len(p.read_text().splitlines()), str(p.relative_to(PACKAGE.parent))) for p in PACKAGE.rglob("*.py"))
    long_files = [f"{path} ({n} lines)" for n, path in files if n > LONG_FILE]
    assert len(long_files) <= MAX_LONG_FILES, f"more than {MAX_LONG_FILES} files over {LONG_FILE} lines: {long_files}"
    long_functions = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > LONG_FUNCTION:
                    body = "\n".join(lines[node.lineno - 1: node.end_lineno])
                    long_functions.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)",
                                           "# long because" in body))
    assert len(long_functions) <= MAX_LONG_FUNCTIONS, f"functions over {LONG_FUNCTION} lines: {long_functions}"
    unexplained = [name for name, why in long_functions if not why]
    assert not unexplained, f"say why in a '# long because ...' comment: {unexplained}"


def test_code_speaks_of_the_code() -> None:
    pattern = re.compile(r"issue ?#?[0-9]+", re.IGNORECASE)
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "history belongs in docs/history.md: " + ", ".join(hits)
