"""The tree shows the layers: only `resources/`, `assets/` and the wiring import Dagster (so the logic layers
run where Dagster is not installed, as the GPU benchmarks do); module names are not repeated across layers, no
private name crosses a module, no asset module imports another, and functions fit on a screen."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "alignment_dagster"
DAGSTER_LAYERS = ("resources", "assets", "cli")
WIRING = {"automation", "definitions", "jobs", "partitions", "sensors"}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    return {
        p.relative_to(PACKAGE).as_posix(): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))
    }


def imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a module, function-level ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_only_resources_assets_and_wiring_import_dagster() -> None:
    offenders = []
    for path, tree in modules().items():
        top = path.split("/")[0].removesuffix(".py")
        if top in DAGSTER_LAYERS or top in WIRING:
            continue
        # dagster_pipes is the protocol's other end: dependency-free, made for processes without Dagster.
        offenders += [
            f"{path}: {m}"
            for m, _ in imports(tree)
            if m.split(".")[0].startswith("dagster") and m.split(".")[0] != "dagster_pipes"
        ]
    assert offenders == []


def test_top_level_holds_packages_and_wiring_only() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} - WIRING - {"__init__"}
    assert loose == set()
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} >= {
        "compute",
        "core",
        "specs",
        "data",
        "judge",
        "human",
        "backends",
        "training",
        "evaluation",
        "resources",
        "assets",
        "cli",
    }


def test_no_module_name_in_two_places() -> None:
    names: dict[str, list[str]] = {}
    for path in modules():
        stem = Path(path).stem
        if stem not in ("__init__", "__main__"):
            names.setdefault(stem, []).append(path)
    assert {n: ps for n, ps in names.items() if len(ps) > 1} == {}


def test_no_private_name_crosses_modules_and_no_asset_imports_another() -> None:
    trees = modules()
    asset_modules = {
        f"alignment_dagster.{p.removesuffix('.py').replace('/', '.')}"
        for p, tree in trees.items()
        if p.startswith("assets/") and _defines_assets(tree)
    }
    private, cross = [], []
    for path, tree in trees.items():
        for module, names in imports(tree):
            if module.startswith("alignment_dagster"):
                private += [f"{path}: {module}.{n}" for n in names if n.startswith("_")]
                if path.startswith("assets/") and module in asset_modules:
                    cross.append(f"{path}: {module}")
    assert (private, cross) == ([], [])


def _defines_assets(tree: ast.Module) -> bool:
    decorators = {"asset", "multi_asset", "asset_check"}
    return any(
        isinstance(d, ast.Call)
        and getattr(d.func, "id", None) in decorators
        or getattr(d, "id", None) in decorators
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for d in node.decorator_list
    )


def test_functions_fit_on_a_screen() -> None:
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
