"""The package's shape: imports run one way (no circle, not even through imports inside functions),
no module grows past ~300 lines, rl/ and config/ stay free of rewards and data, config of torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlhf_app"
MAX_LINES = 320


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """rlhf_app module -> the rlhf_app modules it imports anywhere in its text (top level or inside a
    function), from its `import` / `from ... import` statements. `from pkg import name` counts as an
    import of pkg.name when that is a module, else of pkg. Importing a submodule runs its package's
    __init__ too; that implicit step is not an edge."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: from the importing module's package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + [node.module])
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                               for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert reachable(graph, "d") == {"a", "b", "c"}


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_rl_engines_and_models_import_one_way():
    graph = import_graph()
    inside = lambda prefix: {m for m in graph if m == prefix or m.startswith(prefix + ".")}  # noqa: E731
    models, rl, engines = inside("rlhf_app.models"), inside("rlhf_app.rl"), inside("rlhf_app.engines")
    # models never reach the loop or the engines; the loop never names an engine.
    assert not any(reachable(graph, m) & (rl | engines) for m in models)
    assert not any(reachable(graph, m) & engines for m in rl)


def test_rl_and_config_never_import_rewards_or_data():
    graph = import_graph()
    for module in graph:
        if module.startswith(("rlhf_app.rl.", "rlhf_app.config")):
            bad = {t for t in graph[module] if t.startswith(("rlhf_app.rewards", "rlhf_app.data"))}
            assert not bad, (module, bad)


def test_config_imports_no_torch():
    for path in (PACKAGE / "config").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path
    code = "import sys, rlhf_app.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_module_is_longer_than_about_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
