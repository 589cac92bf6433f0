"""The package's rooms: the layering rule, the public surface, room sizes.

The layering rule itself is stated once, as import-linter contracts in
`pyproject.toml`; these tests run it, and check what a contract cannot say:
no cycle, no module importing the package root, at most 11 import floors
up to `TransferRun` and 15 in all (the task and the command above it),
no module over 600 lines nor function over 80, only the package's face
directly under `transferkit/`, and the public surface as recorded in
`tests/public_surface.txt` (a change to it is a decision: update the file
in the same commit, with `python tests/test_architecture.py`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "transferkit"
SURFACE_FILE = Path(__file__).with_name("public_surface.txt")

FACE = {"__init__.py", "__main__.py", "errors.py", "version.py", "py.typed"}
"""What may stand directly under `transferkit/`; everything else is in a room."""

PUBLIC_NAMESPACES = (
    "transferkit",
    "transferkit.errors",
    "transferkit.records",
    "transferkit.serving",
    "transferkit.run",
    "transferkit.datasets",
    "transferkit.cli",
    "transferkit.backbones",
)
"""The modules whose `__all__` is the public surface; the other rooms'
`__init__` declare an empty one."""

MAX_FLOORS = 15
"""The package's import floors: 11 up to `TransferRun` (`RUN_FLOORS`, as
before the task room), and on top of it the image task, the `train`
command that runs it and the command's entry points."""

RUN_FLOORS = 11
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


@functools.cache
def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """transferkit's modules and the transferkit modules each imports, from
    their source: imports inside functions count, those only for type
    checking do not, and a package's `__init__` (which re-exports its room's
    names) is no floor of its own: an import of it counts as one of the
    modules it re-exports from."""
    paths = {module_name(p): p for p in package.rglob("*.py")}
    edges = {name: _imports(path, paths) for name, path in paths.items()}
    packages = {n for n, p in paths.items() if p.name == "__init__.py"}

    def resolve(name: str, seen=()) -> set[str]:
        if name not in packages or name in seen:
            return {name}
        return {m for t in edges[name] for m in resolve(t, (*seen, name))}

    return {
        name: {m for t in targets for m in resolve(t) if m != name}
        for name, targets in edges.items()
        if name not in packages
    }


def _imports(path: Path, modules) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif node.module in modules:
                    found.add(node.module)
    return found


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 0 for one that imports no transferkit module,
    else one above the highest it imports. Raises on a cycle."""
    floor: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            raise AssertionError(f"Import cycle: {cycle}")
        if name not in floor:
            below = [visit(t, (*path, name)) for t in graph.get(name, ())]
            floor[name] = 1 + max(below) if below else 0
        return floor[name]

    for name in graph:
        visit(name, ())
    return floor


def test_the_import_linter_contracts_are_kept():
    """The rows of rooms (each imports only those below; rooms on a row do
    not import each other) and records without Keras or TensorFlow, as
    `pyproject.toml` states them. (In a process of its own: import-linter
    writes to the terminal it found at import.)"""
    done = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


LINT_IMPORTS = """
import sys
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))
"""


def test_no_cycle_no_import_of_the_root_and_at_most_15_floors():
    graph = import_graph()
    into_root = sorted(
        name for name, targets in graph.items() if "transferkit" in targets
    )
    assert not into_root, (
        f"{into_root} import the package root; import the module that holds "
        "the name (e.g. transferkit.version) instead."
    )
    floor = floors(graph)
    top = max(floor.values())
    assert top + 1 <= MAX_FLOORS, sorted(floor.items(), key=lambda item: -item[1])[:5]
    assert floor["transferkit.run.transfer_run"] + 1 <= RUN_FLOORS


def test_the_floor_count_sees_a_chain_and_a_cycle(tmp_path):
    """The floor count above can fail: a chain of three modules is three
    floors, and a cycle raises."""
    package = tmp_path / "transferkit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import transferkit.b\n")
    (package / "b.py").write_text("from transferkit import c\n")
    (package / "c.py").write_text("")
    graph = _graph_of(tmp_path, package)
    assert max(floors(graph).values()) + 1 == 3

    (package / "c.py").write_text("def f():\n    from transferkit.a import x\n")
    with pytest.raises(AssertionError, match="Import cycle"):
        floors(_graph_of(tmp_path, package))


def _graph_of(root: Path, package: Path) -> dict[str, set[str]]:
    paths = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    return {name: _imports(path, paths) for name, path in paths.items()}


def test_only_the_face_of_the_package_stands_outside_the_rooms():
    loose = sorted(
        path.name
        for path in PACKAGE.iterdir()
        if path.is_file() and path.name not in FACE
    )
    assert not loose, f"{loose} belong in a subpackage of their concern"


def test_rooms_stay_small():
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                        f"{length} lines"
                    )
    assert not too_big, too_big


def public_surface() -> list[str]:
    """One line per public name: `module.name` and, for a class or a
    function, its signature (a class's constructor), so that an added,
    removed or renamed name or keyword shows in the diff."""
    lines = []
    for namespace in PUBLIC_NAMESPACES:
        module = importlib.import_module(namespace)
        for name in sorted(module.__all__):
            value = getattr(module, name)
            lines.append(f"{namespace}.{name}{_signature(value)}")
    return lines


def _signature(value) -> str:
    if inspect.ismodule(value):
        return " (module)"
    target = value.__init__ if inspect.isclass(value) else value
    if inspect.isclass(value) and issubclass(value, BaseException):
        return f" ({', '.join(base.__name__ for base in value.__bases__)})"
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return ""
    names = [
        ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "")
        + p.name
        for p in signature.parameters.values()
        if p.name != "self"
    ]
    return f"({', '.join(names)})"


def test_the_public_surface_is_as_recorded():
    recorded = SURFACE_FILE.read_text().splitlines()
    current = public_surface()
    added = sorted(set(current) - set(recorded))
    removed = sorted(set(recorded) - set(current))
    assert not added and not removed, (
        f"The public surface changed. Added: {added}. Removed: {removed}. If "
        "that is the decision, record it: python tests/test_architecture.py"
    )


def test_each_public_name_has_one_public_path():
    paths: dict[int, list[str]] = {}
    for namespace in PUBLIC_NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            value = getattr(module, name)
            if not isinstance(value, str | tuple | int):
                paths.setdefault(id(value), []).append(f"{namespace}.{name}")
    assert not [p for p in paths.values() if len(p) > 1]


def test_internal_rooms_declare_an_empty_surface():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = module_name(init)
        if name in PUBLIC_NAMESPACES:
            continue
        assert importlib.import_module(name).__all__ == [], name


def test_a_transfer_run_takes_at_most_12_keyword_options():
    """The experiment, the folder, where it runs, `Speed`, and the checks;
    the model's own facts (groups, class names) stay on the model."""
    from transferkit import TransferRun

    parameters = inspect.signature(TransferRun.__init__).parameters.values()
    options = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    assert len(options) <= 12, options
    assert not {"groups", "class_names", "feature_cache", "lean_step"} & set(options)


def test_every_public_exception_is_in_transferkit_errors():
    errors = importlib.import_module("transferkit.errors")
    raised_here = {
        name
        for namespace in PUBLIC_NAMESPACES
        for name in importlib.import_module(namespace).__all__
        if inspect.isclass(getattr(importlib.import_module(namespace), name))
        and issubclass(getattr(importlib.import_module(namespace), name), Exception)
    }
    assert raised_here <= set(errors.__all__), raised_here - set(errors.__all__)
    defined_elsewhere = sorted(
        f"{module_name(path)}.{node.name}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
            for base in node.bases
        )
    )
    assert not defined_elsewhere, defined_elsewhere


BENCHMARK_INTERNALS = {
    "transferkit.cache.blocks.largest_activation",
    "transferkit.cache.features.FeatureCache",
    "transferkit.data.prepare.prepare_data",
    "transferkit.engine.epoch_guard.non_finite_variables",
    "transferkit.engine.loop.InMemoryLoop",
    "transferkit.engine.optimizers.fuse_updates",
    "transferkit.layers.lean.lean_layers",
    "transferkit.layers.precision.apply_precision",
    "transferkit.phases.freeze_proof.digest",
    "transferkit.run_folder.directory.RunDirectory",
    "transferkit.data.input_recipe.recipe_of_dataset",
}
"""The internal names benchmarks may import: each times or checks that
mechanism itself (the lean step, the loop, the data checks, the digest),
which no public name exposes."""


def test_examples_and_docs_import_only_public_names():
    sources = [*ROOT.glob("examples/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    private = private_imports(sources)
    assert not private, private


def test_benchmarks_import_only_public_names_or_the_mechanism_they_time():
    private = private_imports(ROOT.glob("benchmarks/*.py"))
    unexpected = [
        line for line in private if line.split(": ")[1] not in BENCHMARK_INTERNALS
    ]
    assert not unexpected, unexpected
    used = {line.split(": ")[1] for line in private}
    assert used == BENCHMARK_INTERNALS, BENCHMARK_INTERNALS - used  # None stale.


def private_imports(paths) -> list[str]:
    """`path: module.name` for every transferkit name that `paths` import
    and no public namespace lists."""
    public = {
        namespace: set(importlib.import_module(namespace).__all__)
        for namespace in PUBLIC_NAMESPACES
    }
    private = []
    for path in paths:
        for node in _imports_in(path):
            if isinstance(node, ast.Import):
                private += [
                    f"{path.relative_to(ROOT)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("transferkit") and a.name not in public
                ]
            elif (node.module or "").startswith("transferkit"):
                known = public.get(node.module, set())
                private += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name not in known
                ]
    return private


def _imports_in(path: Path) -> list[ast.AST]:
    """The import statements of a Python file, or of a page's Python blocks
    (those that parse: some show a fragment)."""
    text = path.read_text()
    blocks = [text] if path.suffix == ".py" else text.split("```python")[1:]
    found = []
    for block in blocks:
        code = block if path.suffix == ".py" else block.split("```")[0]
        try:
            tree = ast.parse(code)
        except SyntaxError:
            code = "\n".join(line for line in code.splitlines() if "import" in line)
            try:
                tree = ast.parse(code)
            except SyntaxError:
                continue
        found += [
            n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
        ]
    return found


if __name__ == "__main__":
    SURFACE_FILE.write_text("\n".join(public_surface()) + "\n")
    print(f"recorded {SURFACE_FILE}")
    sys.exit(0)
