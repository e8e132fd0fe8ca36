"""The package's shape, checked from its source: no import cycles (function-level imports included), no private
names imported across modules, the Hub files self-contained, comments that point only inside the repo."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_klas"
HUB_FILES = ("modeling_stitched.py", "configuration_stitched.py", "modeling_stitchable.py",
             "configuration_stitchable.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]):
    """``(target module, imported names, node)`` for every hf_klas import in ``path``, wherever it stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("hf_klas"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, [], node) if sub in known else (target, [alias.name], node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hf_klas"):
                    yield alias.name, [], node


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _, _ in imports(path, known):
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name and target in known:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    edges = graph()
    assert len(edges) > 30  # the walk saw the package
    found = cycles(edges)
    assert not found, f"import cycles (function-level imports count): {found}"


def test_the_import_graph_test_sees_a_cycle():
    """The check itself can fail: a two-module loop is found."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_private_name_is_imported_from_another_module():
    known = modules()
    leaks = []
    for name, path in known.items():
        for target, names, node in imports(path, known):
            leaks += [f"{name}:{node.lineno} imports {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
    assert not leaks, leaks


def test_hub_files_import_only_relative_siblings():
    """What save_pretrained copies for trust_remote_code must not need hf_klas installed."""
    for file in HUB_FILES:
        tree = ast.parse((PACKAGE / file).read_text())
        absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level
                    and (n.module or "").startswith("hf_klas")]
        absolute += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                     if a.name.startswith("hf_klas")]
        assert not absolute, (file, absolute)


def test_comments_point_only_inside_the_repo():
    pattern = re.compile(r"TRANSFORMERS_NOTES|MISSION\.md|KLAS\.md|\btrap \d|\bissue \d", re.IGNORECASE)
    hits = [f"{p.relative_to(PACKAGE.parent)}:{k}" for p in PACKAGE.rglob("*.py")
            for k, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    tests = Path(__file__).parent
    hits += [f"tests/{p.name}:{k}" for p in tests.glob("*.py") if p.name != Path(__file__).name
             for k, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_internal_import_stands_inside_a_function():
    """Imports at module top only, so the graph above is the whole truth and nothing wires itself at call time
    (the Hub file's by-name lookup of the installed builder is importlib, on purpose: see modeling_stitchable)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_klas")):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("hf_klas") for a in node.names):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, found


def test_everything_the_hub_files_import_is_relative_only_too():
    """save_pretrained copies the Hub files and, through transformers' remote-code loader, every sibling they
    import; each of those must also import only relative siblings (no ``hf_klas.`` and no subpackage)."""
    known = modules()
    todo, seen = [f"hf_klas.{f[:-3]}" for f in HUB_FILES], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = known[name]
        tree = ast.parse(path.read_text())
        absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level
                    and (n.module or "").startswith("hf_klas")]
        absolute += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                     if a.name.startswith("hf_klas")]
        assert not absolute, (name, absolute)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module, (name, node.lineno, "a Hub file's import leaves its folder")
                assert f"hf_klas.{node.module}" in known and "." not in node.module, (name, node.module)
                todo.append(f"hf_klas.{node.module}")
    assert len(seen) > len(HUB_FILES)  # the walk followed the imports


def test_import_hf_klas_and_help_load_no_runner():
    """``import hf_klas`` registers the classes and stops; ``hf-klas --help`` lists the commands without
    importing them (the import-time benchmark measures what this saves)."""
    import json
    import subprocess
    import sys

    heavy = ["transformers.trainer", "peft", "datasets", "hf_klas.selection", "hf_klas.building",
             "hf_klas.training", "hf_klas.evaluation", "hf_klas.study"]
    code = ("import sys, json, hf_klas\nfrom hf_klas.cli import build_parser\nbuild_parser([])\n"
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    code = "import hf_klas\nprint(hf_klas.StitchedModel.__module__, hf_klas.build_stitchable.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.split() == ["hf_klas.building.stitched", "hf_klas.building.stitchable"]
