"""Arrows point down: every module under mnnq/ imports only its own layer or a lower one.

    testing   mnnq.testing: runs the entry point in-process for tests and plugin authors
    entry     mnnq.cli (assembles the commands), mnnq.__main__; the console script
    commands  the *_command modules, mnnq.api, mnnq.plugin (the plugin authors' module), the
              package's __init__
    engines   autoquant, quantize, gate (minus their commands), apply, testdir make / show
    library   inputs/ (models, images, arrays, references), report, cli_args (shared by commands)
    backend   mnn_backend/: everything that touches the MNN pip package
    core      errors, records, contracts, layers, testset, measure, params, weightquant, fileio,
              version, hookspecs, plugin_manager

An import is any ``import`` / ``from ... import`` anywhere in a module (function bodies and
``if TYPE_CHECKING:`` blocks included), and any string constant that names a module under
mnnq/ (``python -m <module>``, preload lists): loading by name is an arrow too. Within one
layer, packages (and top-level modules) must not import each other in a cycle.

Where a module does not fit, move the offending code, not the rule; :data:`ALLOWED` lists the
exceptions still standing, each with its reason.
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1] / "mnnq"
LAYERS = ("core", "backend", "library", "engines", "commands", "entry", "testing")  # bottom to top

# The layer map: the most specific prefix names a module's layer ("mnnq" alone is only the package's __init__).
LAYER_OF = {
    "mnnq.errors": "core", "mnnq.records": "core", "mnnq.layers": "core", "mnnq.testset": "core",
    "mnnq.measure": "core", "mnnq.params": "core", "mnnq.weightquant": "core", "mnnq.fileio": "core",
    "mnnq.version": "core", "mnnq.hookspecs": "core", "mnnq.plugin_manager": "core", "mnnq.contracts": "core",
    "mnnq.mnn_backend": "backend",
    "mnnq.inputs": "library", "mnnq.report": "library", "mnnq.cli_args": "library",
    "mnnq.autoquant": "engines", "mnnq.quantize": "engines", "mnnq.gate": "engines", "mnnq.apply": "engines",
    "mnnq.frontend.testdir_make": "engines", "mnnq.frontend.testdir_show": "engines",
    "mnnq": "commands", "mnnq.api": "commands", "mnnq.plugin": "commands", "mnnq.apply_command": "commands", "mnnq.plugins_command": "commands",
    "mnnq.autoquant.command": "commands", "mnnq.autoquant.tradeoff_command": "commands", "mnnq.quantize.command": "commands", "mnnq.frontend": "commands",
    "mnnq.gate.validate_command": "commands", "mnnq.gate.check_command": "commands",
    "mnnq.cli": "entry", "mnnq.__main__": "entry",
    "mnnq.testing": "testing",
}

# (importer, imported): upward arrows still standing, and why.
ALLOWED: Dict[Tuple[str, str], str] = {}


def module_names() -> Dict[str, Path]:
    """``{dotted name: file}`` of every module under mnnq/ (a package is its ``__init__``)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def layer_of(module: str) -> Optional[str]:
    if module == "mnnq":
        return LAYER_OF["mnnq"]
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:n])]
    return None


def imports_of(module: str, path: Path, known: Set[str]) -> List[Tuple[int, str]]:
    """``[(line, imported module)]``: every mnnq module ``path`` imports or names in a string."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from mnnq.gate import runner` imports the module mnnq.gate.runner
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known - {"mnnq"}:
            found.append((node.lineno, node.value))  # "mnnq" alone is the project's name (hook marker, cache)
    return sorted({(line, name) for line, name in found if name == "mnnq" or name.startswith("mnnq.")})


def graph() -> Dict[str, List[Tuple[int, str]]]:
    names = module_names()
    return {module: imports_of(module, path, set(names)) for module, path in names.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in module_names() if layer_of(m) is None]
    assert not unplaced, (f"{', '.join(unplaced)}: in no layer; add it (or its package) to LAYER_OF in "
                          f"{Path(__file__).name}")


def test_imports_point_down():
    names = module_names()
    upward = []
    for module, imported in graph().items():
        for line, target in imported:
            if (module, target) in ALLOWED:
                continue
            if target not in names:
                upward.append(f"{names[module].relative_to(ROOT.parent)}:{line}: {module} imports {target}, "
                              "which does not exist")
                continue
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                upward.append(f"{names[module].relative_to(ROOT.parent)}:{line}: {module} ({layer_of(module)}) "
                              f"imports {target} ({layer_of(target)}), a higher layer")
    assert not upward, "imports pointing up (move the code, not the rule):\n" + "\n".join(upward)


def test_allowed_exceptions_still_exist():
    edges = {(m, t) for m, imported in graph().items() for _, t in imported}
    stale = [f"{m} -> {t}" for m, t in ALLOWED if (m, t) not in edges]
    assert not stale, f"no longer imported; remove from ALLOWED: {', '.join(stale)}"


def unit(module: str) -> Tuple[str, str]:
    """A package (or top-level module) within one layer: the nodes of the cycle check."""
    return ".".join(module.split(".")[:2]), layer_of(module)


def find_cycle(edges: Dict[Tuple, Set[Tuple]]) -> Optional[List[Tuple]]:
    state: Dict[Tuple, int] = {}  # 1 on the current path, 2 done
    path: List[Tuple] = []

    def visit(node) -> Optional[List[Tuple]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_between_packages():
    edges: Dict[Tuple, Set[Tuple]] = {}
    for module, imported in graph().items():
        for _, target in imported:
            if (module, target) not in ALLOWED and unit(module) != unit(target):
                edges.setdefault(unit(module), set()).add(unit(target))
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between packages: " + " -> ".join(f"{p} ({layer})" for p, layer in cycle)


def test_the_cycle_check_finds_a_cycle():
    a, b, c = ("mnnq.a", "engines"), ("mnnq.b", "engines"), ("mnnq.c", "engines")
    assert find_cycle({a: {b}, b: {c}}) is None
    assert find_cycle({a: {b}, b: {c}, c: {a}}) == [a, b, c, a]


def test_building_the_parser_imports_no_mnn():
    """The commands are imported by name in mnnq.cli; each imports its engine lazily, so `mnnq --help`
    (and argument errors) never pay for MNN."""
    code = ("import sys, mnnq.cli; mnnq.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('MNN', '_tools')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
