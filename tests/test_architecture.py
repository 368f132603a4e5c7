"""Layering rules a contributor could break without noticing."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_method_contract_imports_neither_torch_nor_ray_nor_the_training_code():
    code = ("import sys, bench.contract.method, bench.contract.space, bench.contract.options; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'bench.training.train', "
            "'bench.worker.fit') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_reading_a_suite_and_starting_every_plugin_imports_no_training_code():
    # a suite is read and checked in the driver before anything runs: the training loop,
    # the learned methods' fit modules, laplace and Ray load on workers only
    code = ("import sys\n"
            "from bench.contract.method import Context\n"
            "from bench.contract.plugins import available_methods, build_method\n"
            "from bench.driver.suite import load_suite\n"
            "suite = load_suite('suites/smoke.toml')\n"
            "for name in available_methods():\n"
            "    for task in suite.tasks:\n"
            "        build_method(name, {}).start(Context.of(task, 0, suite.budget, False))\n"
            "print(sorted(m for m in ('bench.training.train', 'bench.worker.fit', "
            "'bench.worker.selflabel', "
            "'methods._de_elbo_fit', 'methods._marglik_fit', 'laplace', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


# bench's subpackages, lowest first: a module imports only from its own layer or below
# (the command line, bench.testing, bench.benchmarks and bench.gpu_check sit on top and may
# import any)
LAYERS = ("contract", "training", "zoo", "worker", "records", "driver", "analysis")
# what the contract (what plugins, backends and records agree on) must never pull in
HEAVY = ("torch", "torchvision", "ray", "optuna", "laplace", "pandas", "numpy", "matplotlib")


def _imports(path: Path, package: str, typing: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, in functions too; imports made only
    for type checkers (``if TYPE_CHECKING:``) are left out unless ``typing``."""
    tree = ast.parse(path.read_text())
    skip = set() if typing else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
        and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names] + [
                (node.lineno, base)]
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "bench" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else len(LAYERS)


def test_every_subpackage_imports_only_its_own_layer_or_below():
    upward = []
    for layer, name in enumerate(LAYERS):
        for path in sorted((ROOT / "bench" / name).glob("*.py")):
            for line, target in _imports(path, f"bench.{name}"):
                there = _layer(target)
                if there is not None and there > layer:
                    upward.append(f"bench/{name}/{path.name}:{line} imports {target}")
    assert upward == []


def test_bench_has_no_loose_modules_but_its_entry_points():
    loose = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "benchmarks.py", "cli.py", "cli_reference.py",
                     "gpu_check.py", "testing.py"]


def test_the_contract_imports_nothing_heavy_even_lazily():
    heavy = [f"{path.name}:{line} imports {target}"
             for path in sorted((ROOT / "bench" / "contract").glob("*.py"))
             for line, target in _imports(path, "bench.contract")
             if target.split(".")[0] in HEAVY]
    assert heavy == []


# In-function imports a circle inside a package may pass through, each for a reason: the
# suite parser reaches the replay checks (pandas, the records) only for a replay suite, and
# they use its tables; the run output loads the live display only when it is shown. Every
# other circle (module-level imports, or in-function ones not listed) is refused.
LAZY_CIRCLES = {("bench.driver.suite", "bench.driver.suite_records"),
                ("bench.driver.run_output", "bench.driver.live_display")}


def _package_graph(name: str) -> tuple[dict, dict]:
    """(module-level edges, in-function edges) between the modules of ``bench.<name>``;
    an import for type checkers only is a module-level edge: a reader follows it all the
    same, and it is one line from becoming a real import."""
    package = f"bench.{name}"
    modules = {f"{package}.{p.stem}": p for p in (ROOT / "bench" / name).glob("*.py")
               if p.stem != "__init__"}
    top: dict[str, set] = {m: set() for m in modules}
    lazy: dict[str, set] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        top_lines = {n.lineno for n in ast.walk(tree)
                     if isinstance(n, (ast.Import, ast.ImportFrom))} - {
            n.lineno for f in functions for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))}
        for line, target in _imports(path, package, typing=True):
            target = next((m for m in modules if target == m or target.startswith(m + ".")),
                          None)
            if target and target != module:
                (top if line in top_lines else lazy)[module].add(target)
    return top, lazy


def _reaches(graph: dict, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return False


def _circles(name: str) -> list[str]:
    """Every import of ``bench.<name>``'s modules that lies on a circle, but those through
    an in-function import of ``LAZY_CIRCLES``."""
    top, lazy = _package_graph(name)
    graph = {m: top[m] | {t for t in lazy[m] if (m, t) not in LAZY_CIRCLES} for m in top}
    return sorted(f"{a} -> {b}" + ("" if b in top[a] else " (in a function)")
                  for a in graph for b in graph[a] if _reaches(graph, b, a))


def test_no_package_has_an_import_circle():
    assert [c for name in LAYERS for c in _circles(name)] == []


def test_the_circle_check_sees_circles(tmp_path, monkeypatch):
    # a <-> b through an in-function import; c <-> d through one for type checkers
    package = tmp_path / "bench" / "loop"
    package.mkdir(parents=True)
    (package / "a.py").write_text("from bench.loop.b import thing\n")
    (package / "b.py").write_text("def f():\n    from bench.loop import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from bench.loop.d import thing\n")
    (package / "d.py").write_text("import bench.loop.c\nfrom bench.loop.b import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _circles("loop") == ["bench.loop.a -> bench.loop.b",
                                "bench.loop.b -> bench.loop.a (in a function)",
                                "bench.loop.c -> bench.loop.d", "bench.loop.d -> bench.loop.c"]
