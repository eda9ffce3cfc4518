"""The architecture, checked: packages depend one way, files form no import cycle, nobody
imports another module's private names. Every import counts, including those inside functions.

Layers, lowest first: utils -> tokenize -> models -> data -> train -> diversity/transfer -> study
-> viz -> cli. A module may import its own package and any lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "quadformer"
LAYERS = [["utils"], ["tokenize"], ["models"], ["data"], ["train"], ["diversity", "transfer"], ["study"], ["viz"],
          ["cli"]]
RANK = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, resolved to
    modules of this package."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "quadformer":
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "quadformer":
                continue
            names = [a.name for a in node.names]
            sub = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known]  # `from . import metrics`
            out.append((mod, [n for n in names if f"{mod}.{n}" not in known], node.lineno))
            out.extend((s, [], node.lineno) for s in sub)
    return out


def package_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_packages_depend_one_way():
    bad = []
    for mod, deps in graph().items():
        src_pkg = package_of(mod)
        if src_pkg is None:
            continue
        assert src_pkg in RANK, f"package quadformer.{src_pkg} has no place in the layers; add it to LAYERS"
        for dep, _, line in deps:
            dst = package_of(dep)
            if dst is None or dst == src_pkg:
                continue
            if RANK[dst] > RANK[src_pkg] or (RANK[dst] == RANK[src_pkg] and dst != src_pkg):
                bad.append(f"{mod}:{line} imports {dep} ({src_pkg} -> {dst})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_cycle_between_files():
    known = modules()
    edges: dict[str, set[str]] = {}
    for mod, deps in graph().items():
        for dep, _, _ in deps:
            # importing a package means importing its __init__; a package's __init__ re-exporting its
            # own modules is not a cycle of files, so edges into one's own package __init__ are skipped
            if dep in known and dep != mod and not mod.startswith(dep + "."):
                edges.setdefault(mod, set()).add(dep)
    cycle = _cycle(edges)
    assert cycle is None, "import cycle between files: " + " -> ".join(cycle or [])


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for mod, deps in graph().items():
        a = package_of(mod)
        for dep, _, _ in deps:
            b = package_of(dep)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    cycle = _cycle(edges)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_no_private_names_imported_across_modules():
    bad = []
    for mod, deps in graph().items():
        for dep, names, line in deps:
            if dep == mod:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{mod}:{line} takes {private} from {dep}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("fake, expect", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}}, None),
])
def test_cycle_finder_finds_cycles(fake, expect):
    assert _cycle(fake) == expect


def test_walker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ..train.engine import _x\n")
    got = imports_of("quadformer.models.m", f, {})
    assert got == [("quadformer.train.engine", ["_x"], 2)]


def test_docstrings_cite_documents_of_this_repository():
    """Docstrings cite papers and ``docs/...`` files; a "spec §N" points at nothing a reader has."""
    bad = [f"{p.relative_to(SRC.parent)}:{i}" for p in sorted(SRC.rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if "spec §" in line]
    assert not bad, "references to a spec outside the repository: " + ", ".join(bad)
    root = SRC.parents[1]
    cited = {m for p in SRC.rglob("*.py") for m in __import__("re").findall(r"docs/[\w/.-]+\.md", p.read_text())}
    missing = sorted(c for c in cited if not (root / c).is_file())
    assert not missing, f"docstrings cite documents that do not exist: {missing}"
