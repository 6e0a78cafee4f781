"""The import rules of docs/architecture.md: layers import only downward; pyfuse3 stays at the edge."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ocifs"

LAYERS: dict[str, int] = {
    "ocifs": 0,
    "ocifs.errors": 0,
    "ocifs.digest": 0,
    "ocifs.reference": 0,
    "ocifs.config": 0,
    "ocifs.index": 1,
    "ocifs.safetensors_layout": 1,
    "ocifs.registry": 2,
    "ocifs.chunk_cache": 3,
    "ocifs.fetcher": 3,
    "ocifs.prefetch": 3,
    "ocifs.fs": 4,
    "ocifs.fuse_ops": 4,
}
PROCESS_LAYER = 5
PYFUSE3_ALLOWED = {"ocifs.fuse_ops", "ocifs.daemon"}
# The data layer reaches the registry only through the BlobSource protocol.
FORBIDDEN = {3: {"httpx", "ocifs.registry"}, 4: {"httpx", "ocifs.registry"}, 1: {"httpx", "trio"}}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    if best is None or (best[0] == "ocifs" and module != "ocifs"):
        return PROCESS_LAYER
    return best[1]


def resolve_module(name: str) -> str:
    """The module part of ``name`` (``from ocifs.index import X`` records ``ocifs.index.X``)."""
    while "." in name:
        base = PACKAGE.parent / name.replace(".", "/")
        if base.with_suffix(".py").exists() or base.is_dir():
            return name
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_layers_import_only_downward() -> None:
    violations = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 5, "the package should have been found"
    for path in modules:
        name = module_name(path)
        mine = layer_of(name)
        for imported in imports_of(path):
            if imported.startswith("ocifs"):
                known = (
                    imported
                    if (PACKAGE.parent / imported.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE.parent / imported.replace(".", "/")).is_dir()
                    else imported.rsplit(".", 1)[0]
                )
                if layer_of(known) > mine:
                    violations.append(f"{name} (layer {mine}) imports {known} (layer {layer_of(known)})")
            root = imported.split(".")[0]
            if root == "pyfuse3" and name not in PYFUSE3_ALLOWED:
                violations.append(f"{name} imports pyfuse3; only {sorted(PYFUSE3_ALLOWED)} may")
            for banned in FORBIDDEN.get(mine, set()):
                if imported == banned or imported.startswith(banned + "."):
                    violations.append(f"{name} (layer {mine}) imports {imported}")
    assert not violations, "\n".join(sorted(set(violations)))


def test_rule_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from ocifs.push import push\nimport pyfuse3\n")
    assert "ocifs.push" in imports_of(bad)
    assert layer_of("ocifs.push") == PROCESS_LAYER > layer_of("ocifs.index")
    assert layer_of("ocifs.registry.client") == 2
