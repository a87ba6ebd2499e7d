"""The layers of docs/ARCHITECTURE.md hold: every module belongs to one, and no module imports
from a layer above its own (imports inside functions count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ckptsurgeon"

# bottom to top; a module may import from its own layer and the ones below. A layer is a folder
# of the package; "base" is the modules at the top of the package, and api belongs to "run".
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("errors", "version", "dtypes", "sizes", "patterns", "interrupts", "libc",
             "pipeline", "ties", "record"),
    "formats": ("formats", "formats.safetensors", "formats.tensorio", "formats.torch_bin",
                "formats.config_json", "formats.sidefiles", "formats.hub", "formats.checkpoint",
                "formats.opened", "formats.hf_files", "formats.tokenizer_files", "formats.training", "formats.prefixes",
                "formats.torch_zip", "formats.dcp", "formats.deepspeed", "formats.lightning"),
    "rules": ("rules", "rules.bert", "rules.recorder", "rules.model"),
    "plan": ("plan", "plan.selection"),
    "ops": ("ops", "ops.base", "ops.values", "ops.select", "ops.convert", "ops.drop",
            "ops.reinit", "ops.cast", "ops.rename", "ops.layers", "ops.vocab", "ops.config",
            "ops.average", "ops.merge_lora", "ops.add_tokens", "recipe"),
    "run": ("run", "run.layout", "run.card", "run.writer", "run.destination", "run.execute", "run.merge", "runner", "api"),
    "tools": ("tools", "tools.inspection", "tools.compare", "tools.plot", "tools.verify",
              "tools.check", "tools.check_values", "tools.check_config"),
    "cli": ("cli", "cli.group", "cli.surgery", "cli.reading", "cli.options", "cli.render",
            "__main__"),
}  # fmt: skip
# the package's __init__ is the facade: it loads the public names lazily, from every layer
FACADE = "ckptsurgeon"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or FACADE
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == FACADE:
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module is None:  # from . import interrupts: the submodules themselves
                found.update(".".join([*base, a.name]) for a in node.names)
            else:
                found.add(".".join([*base, *node.module.split(".")]))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for n in names:
                if n and (n == "ckptsurgeon" or n.startswith("ckptsurgeon.")):
                    found.add(n.removeprefix("ckptsurgeon.") if n != "ckptsurgeon" else FACADE)
    return found - {name}


def test_every_module_has_a_layer():
    placed = {m for ms in LAYERS.values() for m in ms}
    missing = sorted(set(_modules()) - placed - {FACADE})
    assert not missing, f"put these in a layer (docs/ARCHITECTURE.md): {missing}"
    assert not placed - set(_modules()), sorted(placed - set(_modules()))


def test_nothing_imports_upward_and_only_the_facade_reaches_the_package():
    rank = {m: i for i, ms in enumerate(LAYERS.values()) for m in ms}
    layer = {m: name for name, ms in LAYERS.items() for m in ms}
    upward = []
    for name, path in _modules().items():
        if name == FACADE:
            continue
        for target in _imports(name, path):
            if target == FACADE and name != "__main__":
                upward.append(f"{name} imports the package itself (the facade)")
            elif target in rank and rank[target] > rank[name]:
                upward.append(f"{name} ({layer[name]}) imports {target} ({layer[target]})")
    assert not upward, upward


def test_no_import_circles():
    """No module reaches itself through its imports (those inside functions too): the old
    ops.base <-> ops.layers circle, and plan -> package -> diff, must not come back."""
    modules = _modules()
    graph = {m: {i for i in _imports(m, p) if i in modules} for m, p in modules.items()}
    graph.pop(FACADE)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, "import circle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_each_layer_is_its_folder():
    """A module in a folder belongs to that folder's layer; the top of the package is base."""
    folders = {name for name in LAYERS if (PACKAGE / name).is_dir()}
    for layer, modules in LAYERS.items():
        for module in modules:
            top = module.split(".")[0]
            if top in folders:
                assert top == layer, f"{module} lies in {top}/ but is listed in {layer}"
            elif layer not in ("base", "run", "ops", "cli"):
                raise AssertionError(f"{module} of {layer} is not in {layer}/")
    assert folders == {"formats", "rules", "plan", "ops", "run", "tools", "cli"}


def test_no_module_outgrows_a_screenful_of_screens():
    """No module over 400 lines (the aim is ~350)."""
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_architecture_page_lists_the_layers_in_order():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    headings = re.findall(r"^\d+\. \*\*(\w+)\*\*", text, re.M)
    assert headings == list(LAYERS)
    for modules in LAYERS.values():
        for module in modules:
            assert f"`{module}`" in text, module


def test_the_version_is_the_project_version():
    from ckptsurgeon.version import __version__

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
