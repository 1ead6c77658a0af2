"""The package's shape, checked on its source: layering rules a reviewer would otherwise check by hand.

- Only entry points read the environment or build settings; everything below gets ``Settings`` passed in.
- No import cycles between the package's modules (function-level imports included).
- No two modules share a file name; no module is longer than 500 lines.
- Code imports the package as ``deepscout.<folder>``, never through the bare top-level folder names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("agent", "tools", "memory", "evals", "ui", "model_runtime")
ENTRY_POINTS = ("deepscout/cli/", "deepscout/process.py", "deepscout/settings.py")
"""Modules allowed to read the environment and build settings (relative to the repository root)."""
SETTINGS_CLASSES = {"Settings", "WebSettings", "OpenAISettings", "V4Settings"}
MAX_LINES = 500


def _package_files() -> dict[str, Path]:
    """``deepscout.x.y`` → its file, read from the real folders (the links under deepscout/ are skipped)."""
    modules: dict[str, Path] = {}
    for top in (*FOLDERS, "deepscout"):
        for path in sorted((REPO / top).rglob("*.py")):
            relative = path.relative_to(REPO)
            if any((REPO / parent).is_symlink() for parent in relative.parents):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[0] != "deepscout":
                parts.insert(0, "deepscout")
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _package_files()


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _is_entry_point(path: Path) -> bool:
    return any(_relative(path).startswith(prefix) for prefix in ENTRY_POINTS)


def _environment_and_settings_uses(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in {"environ", "getenv", "putenv", "unsetenv", "environb"}:
                found.append(f"line {node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            names = {alias.name for alias in node.names} & {"environ", "getenv", "putenv"}
            found += [f"line {node.lineno}: from os import {name}" for name in sorted(names)]
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in SETTINGS_CLASSES:
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_only_entry_points_read_the_environment_or_build_settings() -> None:
    offenders = {
        _relative(path): uses
        for path in MODULES.values()
        if not _is_entry_point(path) and (uses := _environment_and_settings_uses(ast.parse(path.read_text())))
    }
    assert not offenders, f"read the environment / build settings below the entry points: {offenders}"


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def test_no_import_cycles() -> None:
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    # A package's __init__ is imported by its submodules implicitly; only explicit imports count.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_module_file_names_are_unique_and_modules_short() -> None:
    by_name: dict[str, list[str]] = {}
    long_modules: list[str] = []
    for path in MODULES.values():
        if path.name != "__init__.py":
            by_name.setdefault(path.name, []).append(_relative(path))
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and "/migrations/" not in _relative(path):
            long_modules.append(f"{_relative(path)} ({lines} lines)")
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"modules sharing a file name: {shared}"
    assert not long_modules, f"modules over {MAX_LINES} lines: {long_modules}"


@pytest.mark.parametrize("folder", ["benchmarks", "tests", *FOLDERS, "deepscout"])
def test_code_imports_the_package_never_the_bare_folders(folder: str) -> None:
    bare: list[str] = []
    for path in sorted((REPO / folder).rglob("*.py")):
        relative = path.relative_to(REPO)
        if any((REPO / parent).is_symlink() for parent in relative.parents):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            bare += [f"{relative}:{node.lineno} {name}" for name in names if name.split(".")[0] in FOLDERS]
    assert not bare, f"imports through the bare top-level folders (use deepscout.<folder>): {bare}"
