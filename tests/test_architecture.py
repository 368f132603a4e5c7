"""Layering rules a contributor could break without noticing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_method_contract_imports_neither_torch_nor_ray_nor_the_training_code():
    code = ("import sys, bench.method, bench.space, bench.options; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'bench.train', 'bench.fit') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_reading_a_suite_and_starting_every_plugin_imports_no_training_code():
    # a suite is read and checked in the driver before anything runs: the training loop,
    # the learned methods' fit modules, laplace and Ray load on workers only
    code = ("import sys\n"
            "from bench.method import Context\n"
            "from bench.plugins import available_methods, build_method\n"
            "from bench.suite import load_suite\n"
            "suite = load_suite('suites/smoke.toml')\n"
            "for name in available_methods():\n"
            "    for task in suite.tasks:\n"
            "        build_method(name, {}).start(Context.of(task, 0, suite.budget, False))\n"
            "print(sorted(m for m in ('bench.train', 'bench.fit', 'bench.selflabel', "
            "'methods._de_elbo_fit', 'methods._marglik_fit', 'laplace', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"
