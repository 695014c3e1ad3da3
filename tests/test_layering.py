"""The package layering of docs/architecture.md, checked on the source (every import, also the
ones inside functions): launchers know nothing of the project, each stage imports only stages
below it, the model imports no tracking, trainer or PBT code, and no module imports itself back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lfads_lightning", "launchers")
# Stages of lfads_lightning, lowest first; a stage may import its own and lower stages only.
STAGES = (
    "errors",
    "config",
    "faults",
    "progress",
    "atomic",
    "data",
    "runs",
    "evaluation",
    "model",
    "worker",
    "pbt",
    "cli",
)
MODEL_FORBIDDEN = (
    "mlflow",
    "lightning.pytorch.trainer",
    "submitit",
    "kubernetes",
    "ray",
    "lfads_lightning.runs",
    "lfads_lightning.worker",
    "lfads_lightning.pbt",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str:
    """`pkg.mod.attr` -> the module it names (`from pkg.mod import attr`)."""
    while name.count(".") and not (
        (ROOT / (name.replace(".", "/") + ".py")).exists()
        or (ROOT / name.replace(".", "/")).is_dir()
    ):
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert node.level == 0, f"{path}: relative import; use absolute imports"
                    targets.update(resolve(f"{node.module}.{a.name}") for a in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
            graph[module_name(path)] = targets
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_launchers_import_nothing_from_the_project():
    bad = {
        (m, t)
        for m, targets in import_graph().items()
        if m.startswith("launchers")
        for t in targets
        if t.split(".")[0] == "lfads_lightning"
    }
    assert not bad, sorted(bad)


def test_each_stage_imports_only_lower_stages():
    bad = []
    for m, targets in import_graph().items():
        if not m.startswith("lfads_lightning.") or stage(m) not in STAGES:
            continue
        for t in targets:
            if not t.startswith("lfads_lightning.") or stage(t) == stage(m):
                continue
            if stage(t) not in STAGES or STAGES.index(stage(t)) > STAGES.index(stage(m)):
                bad.append(f"{m} -> {t}")
    assert not bad, bad


def test_the_model_imports_no_tracking_trainer_or_pbt_code():
    bad = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        if m.startswith("lfads_lightning.model")
        for t in targets
        if t.startswith(MODEL_FORBIDDEN)
    ]
    assert not bad, bad
    for path in (ROOT / "lfads_lightning" / "model").rglob("*.py"):
        assert "Trainer(" not in path.read_text(), f"{path} builds a Trainer"


def test_no_import_cycles():
    graph = {
        m: {t for t in ts if t in PACKAGES or t.split(".")[0] in PACKAGES}
        for m, ts in import_graph().items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t == m or t not in graph:
                continue
            if state.get(t) == 1 and not m.startswith(
                t + "."
            ):  # a package importing its module is fine
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(t) :], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_see_a_violation():
    """The graph is real: the CLI does import the PBT code and the model does import torch."""
    graph = import_graph()
    assert "lfads_lightning.pbt.experiment" in {t for ts in graph.values() for t in ts}
    assert "torch" in graph["lfads_lightning.model.network"]


# The model's two forward paths are the equations written out; everything else stays short.
LONG_FUNCTIONS_ALLOWED = {"_forward_fast", "_forward_reference", "forward"}


def test_modules_and_functions_stay_small():
    too_big = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            if len(source.splitlines()) > 400:
                too_big.append(f"{path.relative_to(ROOT)}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > 60 and node.name not in LONG_FUNCTIONS_ALLOWED:
                        too_big.append(f"{path.relative_to(ROOT)}:{node.name}: {length} lines")
    assert not too_big, too_big
