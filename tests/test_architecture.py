"""Layering rules a contributor could break without noticing."""

import subprocess
import sys


def test_the_method_contract_imports_neither_torch_nor_ray_nor_the_training_code():
    code = ("import sys, bench.method, bench.space, bench.options; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'bench.train', 'bench.fit') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
