"""The package's import graph: layers point one way (no module reaches, even lazily, a module that imports
it back) and constants have one home."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asr", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (functions included), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for top in ast.walk(tree) if isinstance(top, ast.If)
                 and getattr(top.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(top)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    known = {module_name(path) for path in paths}
    graph = {module_name(path): imported_modules(path, known) for path in paths}
    for name, targets in graph.items():  # a package's __init__ importing its own modules is no circle
        graph[name] = {target for target in targets if not name.startswith(target + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles():
    graph = import_graph()
    assert "asr.attention.cpu" in graph["asr.attention.decode"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_sample_rate_has_one_home():
    """16 kHz is ``asr.speech.audio.SAMPLE_RATE``; other modules import it rather than repeat it (an
    assignment to a rate name, or the number 16000 in code; docstrings may show it)."""
    found = []
    for package in (*PACKAGES, "eval"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                rate_name = isinstance(node, ast.Assign) and any(
                    getattr(target, "id", None) in ("SAMPLE_RATE", "SR") for target in node.targets)
                if rate_name or (isinstance(node, ast.Constant) and type(node.value) is int
                                 and node.value == 16000):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert sorted(set(found)) == ["asr/speech/audio.py:24"], found
