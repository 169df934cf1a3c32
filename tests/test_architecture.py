"""The package's shape, enforced: imports point only downward through the layers and never in a circle, and the
light modules (what runs before bad input is refused) import neither TensorFlow, TFF nor MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fedlm"

# Lowest first. A module may import its own layer and the layers below; a command imports no other command.
LAYERS = [
    ("leaves", ["fedlm", "fedlm.console", "fedlm.errors", "fedlm.utils", "fedlm.vocab"]),
    ("conf", ["fedlm.conf"]),
    ("data", ["fedlm.data"]),
    ("model", ["fedlm.model"]),
    ("fl", ["fedlm.fl"]),
    ("tracking", ["fedlm.tracking"]),
    ("experiment", ["fedlm.experiment"]),
    (
        "commands",
        [
            "fedlm.run",
            "fedlm.pretrain",
            "fedlm.generate",
            "fedlm.report",
            "fedlm.bench",
            "fedlm.server",
            "fedlm.worker",
        ],
    ),
]
COMMANDS = dict(LAYERS)["commands"]

# Imported by Hydra for every run, or before bad input is refused: each must load without the 8 s TensorFlow
# import or the 5 s MLflow import (the heavy work is imported inside functions, in the order of its cost).
LIGHT = [
    "fedlm",
    "fedlm.console",
    "fedlm.errors",
    "fedlm.utils",
    "fedlm.vocab",
    "fedlm.conf",
    "fedlm.conf.schema",
    "fedlm.conf.checks",
    "fedlm.conf.preflight",
    "fedlm.conf.workers",
    "fedlm.conf.runlog",
    "fedlm.data",
    "fedlm.data.shakespeare",
    "fedlm.data.partitions",
    "fedlm.data.sources",
    "fedlm.model",
    "fedlm.fl",
    "fedlm.fl.runtime",
    "fedlm.fl.isolated_worker",
    "fedlm.fl.schedules",
    "fedlm.fl.participation",
    "fedlm.fl.fairness",
    "fedlm.fl.privacy",  # not imported before the checks, but pure accounting: dp_accounting needs no TensorFlow
    "fedlm.tracking",
    "fedlm.tracking.tags",
    "fedlm.tracking.sweep",
    "fedlm.tracking.names",
    "fedlm.run",
    "fedlm.pretrain",
    "fedlm.generate",
    "fedlm.report",
    "fedlm.server",  # starts `mlflow server` as a process: imports no MLflow itself
    "fedlm.worker",
]
HEAVY = ("tensorflow", "tensorflow_federated", "mlflow")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def fedlm_imports(module: str) -> set[str]:
    """The fedlm modules `module` imports anywhere (module level and inside functions), resolved to modules."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fedlm"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fedlm":
            for alias in node.names:  # `from fedlm.fl import loop` imports the module fedlm.fl.loop
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found - {module}


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (the package `fedlm` itself matches only itself)."""
    matches = [
        (len(p), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for p in prefixes
        if module == p or (p != "fedlm" and module.startswith(p + "."))
    ]
    assert matches, f"{module} is in no layer of tests/test_architecture.py: place it in one"
    return max(matches)[1]


GRAPH = {m: fedlm_imports(m) for m in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_point_only_downward():
    upward = []
    for module, imported in GRAPH.items():
        for target in imported:
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
            elif module in COMMANDS and target in COMMANDS:
                upward.append(f"command {module} imports command {target}: share code through a layer below")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    """Counting imports inside functions too: a cycle hidden in a function is still one concept split in two."""
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_what_they_check():
    """The layering test is only as good as its import reading: it must see a function-level import."""
    assert "fedlm.experiment" in GRAPH["fedlm.run"]  # imported inside `run`, after the light checks
    assert layer_of("fedlm.fl.loop") > layer_of("fedlm.model.metrics") > layer_of("fedlm.conf.schema")


def test_light_modules_import_no_tensorflow_tff_or_mlflow():
    """Each light module in a fresh interpreter of its own (all at once: each is a second of start-up)."""
    script = (
        "import importlib, sys; importlib.import_module(sys.argv[1]); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", script, m], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for m in LIGHT
    }
    heavy = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{module}: {err[-2000:]}"
        if out.strip():
            heavy[module] = out.split()
    assert not heavy, f"light modules that import heavy libraries: {heavy}"


def test_light_modules_exist():
    assert set(LIGHT) <= set(MODULES)
