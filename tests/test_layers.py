"""The import-layer contract: questkern's imports flow one way.

    CLI  ->  tools (bench, tuning, profiling, quality, report, integrations)  ->  runtime (api, cache)
         ->  ops  ->  base (config, configs/, validate and the shared _modules)

A module may import its own layer or any layer below it, never one above; the tools are peers
whose packages must not import each other in a loop. Every import counts, also one inside a
function. The test reads the source with ``ast`` and imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "questkern"

LAYERS = ["base", "ops", "runtime", "tools", "cli"]  # bottom first
TOOLS = ("bench", "tuning", "profiling", "quality", "report", "integrations")
BASE = ("config", "configs", "validate", "_details", "_dtypes", "_io", "_nvtx", "_shapes", "_timing", "_version")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:  # the package face re-exports the runtime API
        return "runtime"
    top = parts[1]
    if top in ("cli", "__main__"):
        return "cli"
    if top in TOOLS:
        return "tools"
    if top in ("api", "cache"):
        return "runtime"
    if top == "ops":
        return "ops"
    if top in BASE:
        return "base"
    raise AssertionError(f"{mod}: no layer assigned; add it to tests/test_layers.py")


def imports(mod: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported questkern module) for every import in ``path``; ``from pkg import name``
    counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "questkern"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "questkern":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in known else target))
    return out


def edges() -> list[tuple[str, int, str]]:
    known = modules()
    return sorted({(mod, line, target) for mod, path in known.items() for line, target in imports(mod, path, known)})


def tool_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TOOLS else None


def test_every_module_has_a_layer():
    for mod in modules():
        layer(mod)


def test_no_upward_import():
    bad = [
        f"{mod}:{line} imports {target} ({layer(mod)} -> {layer(target)})"
        for mod, line, target in edges()
        if LAYERS.index(layer(target)) > LAYERS.index(layer(mod))
    ]
    assert not bad, "imports that run up a layer:\n" + "\n".join(bad)


def test_tool_packages_import_no_loop():
    graph: dict[str, set[str]] = {t: set() for t in TOOLS}
    where: dict[tuple[str, str], str] = {}
    for mod, line, target in edges():
        a, b = tool_of(mod), tool_of(target)
        if a and b and a != b:
            graph[a].add(b)
            where.setdefault((a, b), f"{mod}:{line} imports {target}")
    loops = []
    for a in TOOLS:  # a loop through a is a path from one of a's targets back to a
        stack, seen = [(b, [a, b]) for b in graph[a]], set()
        while stack:
            node, route = stack.pop()
            if node == a:
                loops.append(
                    " -> ".join(route) + "  (" + "; ".join(where[(x, y)] for x, y in zip(route, route[1:])) + ")"
                )
                break
            if node not in seen:
                seen.add(node)
                stack += [(n, route + [n]) for n in graph[node]]
    assert not loops, "tool packages that import each other in a loop:\n" + "\n".join(loops)


def test_contract_catches_an_upward_import(tmp_path):
    # the checker itself: an ops module importing the runtime, or base importing a tool, is found
    assert LAYERS.index(layer("questkern.api")) > LAYERS.index(layer("questkern.ops.select.kernel"))
    assert LAYERS.index(layer("questkern.tuning.tuner")) > LAYERS.index(layer("questkern.configs.runtime"))
    src = tmp_path / "questkern" / "ops" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from questkern.api import QuestDecode\n    from ..cache import PagedKVCache\n")
    known = {"questkern.api": Path(), "questkern.cache": Path()}
    assert [t for _, t in imports("questkern.ops.x", src, known)] == ["questkern.api", "questkern.cache"]


def test_test_module_basenames_are_unique():
    """pytest imports test modules by basename (no __init__.py): two test_x.py in different folders
    stop the whole run at collection (it happened twice)."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
