"""The import rules of docs/architecture.md, checked on the real package and proven on planted
violations: folders are layers and import only from their own or lower folders; no module
imports itself back through others (no cycle); third-party edges stay in their folder.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ocifs"

#: Folder → layer. Top-level modules (``ocifs/errors.py``…) are the leaves, layer 0.
LAYERS: dict[str, int] = {
    "": 0,
    "format": 1,
    "registry": 2,
    "cache": 3,
    "fs": 4,
    "commands": 5,
}
#: ``python -m ocifs``: the entry point above everything.
ENTRY = {"ocifs.__main__": 6}

#: Third-party packages only some folders (or modules) may import.
ONLY_IN: dict[str, set[str]] = {
    "pyfuse3": {"ocifs.fs.fuse_ops", "ocifs.fs.daemon"},
    "httpx": {"ocifs.registry"},
    "httpcore": {"ocifs.registry"},
    "grpc": {"ocifs.commands.csi"},
}
#: Folders that must stay pure (no event loop, no network).
BANNED_IN: dict[str, set[str]] = {"format": {"trio", "httpx", "socket"}}
#: Lower folders a folder must not use although the layers allow it: the data layer reaches the
#: registry only through the ``BlobSource`` protocol, so it is tested with in-memory fakes.
NOT_FROM: dict[str, set[str]] = {"cache": {"registry"}}


@dataclass(frozen=True)
class Module:
    name: str  # ocifs.cache.store
    folder: str  # "cache"; "" for top-level modules
    path: Path


def modules_of(package: Path) -> dict[str, Module]:
    """Every module of ``package`` by dotted name."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and path.name == "__init__.py") else ""
        found[name] = Module(name, folder, path)
    return found


def layer_of(module: Module) -> int:
    if module.name in ENTRY:
        return ENTRY[module.name]
    return LAYERS.get(module.folder, -1)


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """``(imported name, line)`` for every import in ``path``, at any depth (a function-level
    import is still a dependency). ``from ocifs.x import y`` gives ``ocifs.x.y`` and ``ocifs.x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the rules read absolute ones")
            assert node.module is not None
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def resolve(name: str, modules: dict[str, Module]) -> Module | None:
    """The module ``name`` refers to (``ocifs.format.model.Descriptor`` → ``ocifs.format.model``)."""
    while name:
        if name in modules:
            return modules[name]
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def dependency_graph(package: Path) -> tuple[dict[str, Module], dict[str, dict[str, int]]]:
    """Modules, and for each the modules of the package it imports (with the first line that does)."""
    modules = modules_of(package)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for imported, line in imports_of(module.path):
            if not imported.startswith(package.name + ".") and imported != package.name:
                continue
            target = resolve(imported, modules)
            if target is None or target.name == module.name:
                continue
            graph[module.name].setdefault(target.name, line)
    return modules, graph


def layer_violations(package: Path) -> list[str]:
    """Every import of a higher folder, and every third-party import outside its folder."""
    modules, graph = dependency_graph(package)
    problems = []
    for name, targets in graph.items():
        mine = modules[name]
        for target_name, line in targets.items():
            target = modules[target_name]
            if layer_of(mine) < 0 or layer_of(target) < 0:
                problems.append(f"{mine.path.name}:{line}: {name} or {target_name} is in no layer folder")
            elif target.folder in NOT_FROM.get(mine.folder, set()):
                problems.append(f"{name}:{line} imports {target_name}: {mine.folder}/ must not use {target.folder}/")
            elif layer_of(target) > layer_of(mine):
                problems.append(
                    f"{name}:{line} (folder {mine.folder or 'ocifs/'}, layer {layer_of(mine)}) imports "
                    f"{target_name} (folder {target.folder or 'ocifs/'}, layer {layer_of(target)})"
                )
    for module in modules.values():
        for imported, line in imports_of(module.path):
            root = imported.split(".")[0]
            allowed = ONLY_IN.get(root)
            if allowed is not None and not any(module.name == a or module.name.startswith(a + ".") for a in allowed):
                problems.append(f"{module.name}:{line} imports {root}; only {sorted(allowed)} may")
            if root in BANNED_IN.get(module.folder, set()):
                problems.append(f"{module.name}:{line} imports {root}; the {module.folder}/ folder must stay pure")
    return sorted(set(problems))


def cycles(package: Path) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one
    module, or a module importing itself), each as a sorted list of names (Tarjan)."""
    _, graph = dependency_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# ----------------------------------------------------------------------------------- the package


def test_every_module_is_in_a_layer_folder() -> None:
    modules = modules_of(PACKAGE)
    assert len(modules) > 20, "the package should have been found"
    stray = [m.name for m in modules.values() if layer_of(m) < 0]
    assert not stray, f"modules outside the layer folders {sorted(LAYERS)}: {stray}"


def test_folders_import_only_from_their_own_and_lower_folders() -> None:
    assert layer_violations(PACKAGE) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(PACKAGE) == []


# ------------------------------------------------------------------------ the checker, on a plant


def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "ocifs"
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return package


def test_checker_reports_an_upward_import(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "errors.py": "",
            "cache/store.py": "from ocifs.errors import X\n",
            "commands/push.py": "from ocifs.cache.store import ChunkCache\n",
            "format/model.py": "def f():\n    from ocifs.commands.push import push  # hidden in a function\n",
        },
    )
    problems = layer_violations(package)
    assert len(problems) == 1, problems
    assert "ocifs.format.model:2" in problems[0] and "imports ocifs.commands.push" in problems[0]


def test_checker_reports_a_cycle_inside_one_folder_and_across_folders(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "commands/cli.py": "from ocifs.commands.mount import run\n",
            "commands/mount.py": "from ocifs.commands import cli\n",
            "fs/a.py": "import ocifs.fs.b\n",
            "fs/b.py": "from ocifs.cache.c import x\n",
            "cache/c.py": "from ocifs.fs.a import y\n",
            "cache/d.py": "from ocifs.cache.c import x\n",
        },
    )
    assert cycles(package) == [
        ["ocifs.cache.c", "ocifs.fs.a", "ocifs.fs.b"],
        ["ocifs.commands.cli", "ocifs.commands.mount"],
    ]
    assert any("ocifs.cache.c:1" in p for p in layer_violations(package))


def test_checker_reports_third_party_imports_outside_their_folder(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "fs/filesystem.py": "import pyfuse3\n",
            "fs/fuse_ops.py": "import pyfuse3\n",
            "cache/fetcher.py": "from httpx import AsyncClient\n",
            "cache/prefetch.py": "from ocifs.registry.client import RegistryClient\n",
            "registry/client.py": "import httpx\n",
            "format/parse.py": "import trio\n",
        },
    )
    problems = layer_violations(package)
    assert [p.split(" ")[0] for p in problems] == [
        "ocifs.cache.fetcher:1",
        "ocifs.cache.prefetch:1",
        "ocifs.format.parse:1",
        "ocifs.fs.filesystem:1",
    ], problems


def test_checker_reports_a_module_outside_the_layer_folders(tmp_path: Path) -> None:
    package = _plant(tmp_path, {"errors.py": "", "stray/thing.py": "from ocifs.errors import E\n"})
    assert [m.name for m in modules_of(package).values() if layer_of(m) < 0] == ["ocifs.stray", "ocifs.stray.thing"]
