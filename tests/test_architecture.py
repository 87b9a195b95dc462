"""The shape of the house, checked over the source tree (docs/ARCHITECTURE.md draws it).

Dependencies run one way: scripts/app -> ui/api/batch -> host adapters -> features -> engine ->
models -> images/masks. These tests read every product module's imports with `ast` (nothing is
imported), so they fail on the commit that adds an upward import, an import cycle, a host
(`modules.*`) import outside `compat/`, a late import of our own code, product code importing
tests/ or tools/, or tools/ importing tests/ (tests may import tools, never the reverse).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("sd_webui_sam", "sam_hq", "sam2_image", "local_groundingdino", "scripts")
TOP_MODULES = ("preload", "install")

# Layers, lowest first. A module may import its own layer or any lower one, never a higher one.
# The first matching prefix decides (longest prefixes are listed before their parents).
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("foundations", (
        "sd_webui_sam.script_schema", "sd_webui_sam.script_args", "sd_webui_sam.prompts",
        "sd_webui_sam.errors", "sd_webui_sam.settings", "sd_webui_sam.devices",
        "sd_webui_sam.images", "sd_webui_sam.masks", "sd_webui_sam.rle",
    )),
    ("model code", (
        "sd_webui_sam.modeling", "sd_webui_sam.model_registry", "sd_webui_sam.checkpoints",
        "sd_webui_sam.weights", "sd_webui_sam.families", "sd_webui_sam.downloads", "sd_webui_sam.same_content",
        "sam_hq", "sam2_image",
        "local_groundingdino",
    )),
    ("engine", (
        "sd_webui_sam.model_store", "sd_webui_sam.embedding_cache", "sd_webui_sam.predictor",
        "sd_webui_sam.render", "sd_webui_sam.engine", "sd_webui_sam.metrics", "sd_webui_sam.compiled_encoder",
    )),
    ("features", (
        "sd_webui_sam.text_prompt", "sd_webui_sam.cutout", "sd_webui_sam.autosam",
        "sd_webui_sam.matting", "sd_webui_sam.handoff_pictures", "sd_webui_sam.detail_settings",
        "sd_webui_sam.detailing",
    )),
    ("host adapters", ("sd_webui_sam.compat",)),
    ("front ends", (
        "sd_webui_sam.ui", "sd_webui_sam.api", "sd_webui_sam.batch",
    )),
    ("entry points", (
        "sd_webui_sam.app", "sd_webui_sam.__main__", "sd_webui_sam.batch_ray", "scripts",
        "preload", "install",
    )),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def product_files() -> Iterator[Path]:
    for package in TOP_PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else ()
    for module in TOP_MODULES:
        if (ROOT / f"{module}.py").is_file():
            yield ROOT / f"{module}.py"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class ImportRecord:
    def __init__(self, target: str, line: int, top_level: bool, type_only: bool):
        self.target, self.line, self.top_level, self.type_only = target, line, top_level, type_only


def _imports(path: Path) -> List[ImportRecord]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    records: List[ImportRecord] = []

    def visit(node: ast.AST, top_level: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    records.append(ImportRecord(alias.name, child.lineno, top_level, type_only))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                for alias in child.names:
                    # `from pkg import sub` may name a submodule; record the longer name, the
                    # layer lookup falls back to the prefix when it is an attribute.
                    records.append(ImportRecord(f"{prefix}.{alias.name}", child.lineno, top_level, type_only))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, top_level, True)
            else:
                visit(child, top_level, type_only)

    visit(tree, True, False)
    return records


def _own_module(target: str, known: Set[str]) -> str | None:
    """The product module an import names, or None for a third-party one."""
    name = target
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer(module: str) -> int:
    if module == "sd_webui_sam":  # the core package's __init__ only names what it exports
        return 0
    best = (-1, -1)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    if best[1] < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: give it one")
    return best[1]


def _graph() -> Tuple[Dict[str, Set[str]], Dict[str, List[Tuple[str, ImportRecord]]]]:
    files = {(_module_name(path)): path for path in product_files()}
    known = set(files)
    edges: Dict[str, Set[str]] = defaultdict(set)
    records: Dict[str, List[Tuple[str, ImportRecord]]] = defaultdict(list)
    for module, path in files.items():
        for record in _imports(path):
            target = _own_module(record.target, known)
            records[module].append((target or "", record))
            if target and target != module and not record.type_only:
                edges[module].add(target)
    return edges, records


EDGES, RECORDS = _graph()


def test_every_module_has_a_layer():
    for module in set(EDGES) | set(RECORDS):
        _layer(module)


def test_no_upward_imports():
    upward = []
    for module, targets in sorted(RECORDS.items()):
        for target, record in targets:
            if target and target != module and _layer(target) > _layer(module):
                upward.append(f"{module}:{record.line} imports {target} "
                              f"({LAYERS[_layer(module)][0]} -> {LAYERS[_layer(target)][0]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                strongconnect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            strongconnect(node)
    return found


def test_no_import_cycles_between_modules():
    # A package's __init__ re-exporting its own submodules is not a cycle of concepts.
    edges = {module: {t for t in targets if not (module.endswith(t) or t.startswith(module + "."))}
             for module, targets in EDGES.items()}
    assert _cycles(edges) == []


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "sd_webui_sam" and len(parts) > 1 else parts[0]


def test_no_import_cycles_between_packages():
    edges: Dict[str, Set[str]] = defaultdict(set)
    for module, targets in EDGES.items():
        for target in targets:
            if _package(module) != _package(target):
                edges[_package(module)].add(_package(target))
    assert _cycles(edges) == []


def test_host_modules_are_imported_only_in_compat():
    # `modules` / `modules_forge` / Forge's `backend` / ControlNet's `lib_controlnet` are the WebUI's own packages.
    host_roots = ("modules", "modules_forge", "backend", "lib_controlnet")
    outside = []
    for module, targets in sorted(RECORDS.items()):
        # scripts/ are the WebUI's own entry points: they subclass its Script and register callbacks.
        if module.startswith(("sd_webui_sam.compat", "scripts")) or module in ("preload", "install"):
            continue
        for target, record in targets:
            if not target and record.target.split(".")[0] in host_roots:
                outside.append(f"{module}:{record.line} imports {record.target}")
    assert not outside, "WebUI internals reached outside compat/:\n" + "\n".join(outside)


#: Our packages that load a heavy optional dependency as they are imported (gradio, fastapi,
#: ray): an entry point may import them late, so that a light path (``--help``, the batch CLI,
#: the WebUI without ``--api``) does not pay for them.
HEAVY_OWN = ("sd_webui_sam.ui", "sd_webui_sam.api", "sd_webui_sam.batch_ray", "sd_webui_sam.app",
             "sd_webui_sam.compat.gradio_compat")


def test_our_own_modules_are_imported_at_the_top():
    # A late import of our own code hides the dependency graph; only heavy optional packages may
    # be imported late, each with a comment saying why (checked below).
    late = [f"{module}:{record.line} imports {target}"
            for module, targets in sorted(RECORDS.items())
            for target, record in targets
            if target and not record.top_level
            and not (target.startswith(HEAVY_OWN) and _layer(module) > _layer(target))]
    assert not late, "late imports of the project's own modules:\n" + "\n".join(late)


def test_late_third_party_imports_say_why():
    unexplained = []
    for path in product_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        module = _module_name(path)
        for target, record in RECORDS.get(module, []):
            if record.top_level:
                continue
            here = lines[record.line - 1]
            above = lines[record.line - 2].strip() if record.line >= 2 else ""
            if "#" not in here and not above.startswith("#"):
                unexplained.append(f"{module}:{record.line}: {here.strip()}")
    assert not unexplained, "late imports without a one-line reason:\n" + "\n".join(unexplained)


def _imports_of(roots: Tuple[str, ...], files: Iterator[Path]) -> List[str]:
    """`path:line imports target` for each import in ``files`` of a module under ``roots``."""
    found = []
    for path in files:
        for record in _imports(path):
            if record.target.split(".")[0] in roots:
                found.append(f"{path.relative_to(ROOT)}:{record.line} imports {record.target}")
    return found


def test_tools_never_import_tests():
    # Tests may import tools (the checkpoint builders, the browser driver); the benchmarks and the
    # set-up scripts must run from a tree without tests/, so the arrow never points back.
    imports = _imports_of(("tests",), iter(sorted((ROOT / "tools").rglob("*.py"))))
    assert not imports, "tools/ imports tests/ (move what it needs into tools/):\n" + "\n".join(imports)


def test_product_code_never_imports_tests_or_tools():
    imports = _imports_of(("tests", "tools"), product_files())
    assert not imports, "product code imports tests/ or tools/:\n" + "\n".join(imports)


@pytest.mark.parametrize("package", ["sd_webui_sam", "sam_hq", "sam2_image", "local_groundingdino"])
def test_each_package_names_its_exports(package):
    missing = []
    for init in sorted((ROOT / package).rglob("__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        names = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(target, ast.Name)}
        if "__all__" not in names:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, "packages without __all__: " + ", ".join(missing)
