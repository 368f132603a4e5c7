"""install.sh's air-gapped modes (--wheelhouse, --offline): bad arguments are one line and exit
2 with nothing written; the wheels chosen are those the target lacks; Ray's wheel stays valid
without ray/jars; --offline refuses a wheelhouse for another Python or with a part missing.
Nothing here touches the network (the download itself is measured, not tested)."""

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("--wheelhouse", "--offline", "--python-version", "--have", "--with-torch",
           "--part-size", "--help")


def _load_wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _load_wheelhouse()


def _install(*args, tmp_path):
    """install.sh called from ``tmp_path``, as from any folder."""
    env = {**os.environ, "BENCH_VENV": str(tmp_path / "venv")}
    return subprocess.run([str(ROOT / "install.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


def _host_python() -> str:
    """The Python --offline checks a wheelhouse against: python3, which would make the venv."""
    return subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["--wheelhouse"],
    ["--offline", "--wheelhouse"],
    ["--python-version", "3.12"],
    ["--with-torch"],
    ["--wheelhouse", "{wh}", "--python-version", "3"],
    ["--wheelhouse", "{wh}", "--python-version", "3.10"],
    ["--wheelhouse", "{wh}", "--offline", "{wh}"],
    ["--wheelhouse", "{wh}", "--have", "numpy>=2"],
    ["--wheelhouse", "{wh}", "--part-size", "big"],
    ["--offline", "{wh}"],
])
def test_bad_arguments_are_one_line_exit_2_nothing_written(tmp_path, args):
    wh = tmp_path / "wh"
    result = _install(*[a.format(wh=wh) for a in args], tmp_path=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("install.sh: ")
    assert not wh.exists() and not (tmp_path / "venv").exists()


def test_wheelhouse_refuses_a_directory_holding_other_files(tmp_path):
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "notes.txt").write_text("mine")
    result = _install("--wheelhouse", str(tmp_path / "wh"), tmp_path=tmp_path)
    assert result.returncode == 2 and "holds other files (notes.txt" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "wh"] == []  # no staging left
    assert [p.name for p in (tmp_path / "wh").iterdir()] == ["notes.txt"]


def test_help_tells_every_option_the_parser_takes(tmp_path):
    result = _install("--help", tmp_path=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    for option in OPTIONS:
        assert option in result.stdout
        assert "unknown argument" not in _install(option, tmp_path=tmp_path).stderr
    assert "unknown argument" in _install("--system-site-packages", tmp_path=tmp_path).stderr


def _wheel(path: Path, files: dict[str, bytes], record_too: bool = True) -> Path:
    """A wheel of ``files``; its RECORD lists them with their hashes (``record_too``)."""
    dist_info = next(n.split("/")[0] for n in files if n.split("/")[0].endswith(".dist-info"))
    rows = [f"{name},{wheelhouse._record_hash(data)},{len(data)}" for name, data in files.items()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        listed = rows if record_too else rows[:-1]
        whl.writestr(f"{dist_info}/RECORD", "\n".join(listed + [f"{dist_info}/RECORD,,"]) + "\n")
    return path


def test_ray_without_jars_is_a_valid_wheel(tmp_path):
    vendored = "ray/thirdparty_files/idna-3.15.dist-info/RECORD"
    files = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"J" * 5000,
             "ray/jars/more.jar": b"K" * 300, vendored: b"idna/__init__.py,,\n",
             "ray-2.60.0.dist-info/METADATA": b"Name: ray\nVersion: 2.60.0\n"}
    wheel = _wheel(tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", files)
    assert wheelhouse.drop_jars(wheel) == 5300
    wheelhouse.check_record(wheel)  # every file listed with its hash, every row a file
    with zipfile.ZipFile(wheel) as whl:
        assert not [n for n in whl.namelist() if n.startswith("ray/jars/")]
        assert whl.read(vendored) == files[vendored]
        assert "ray/jars" not in whl.read("ray-2.60.0.dist-info/RECORD").decode()
    assert wheelhouse.drop_jars(wheel) == 0  # a second build leaves it as it is


def test_check_record_refuses_a_file_missing_from_record(tmp_path):
    files = {"pkg/__init__.py": b"", "pkg/extra.py": b"y = 2\n",
             "pkg-1.0.dist-info/METADATA": b"Name: pkg\n"}
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", files, record_too=False)
    with pytest.raises(ValueError, match="RECORD and files differ"):
        wheelhouse.check_record(wheel)


def _report(requires: dict[str, list[str]]) -> dict:
    return {"install": [{"metadata": {"name": name, "version": "1.0", "requires_dist": reqs}}
                        for name, reqs in requires.items()]}


REPORT = _report({
    "finetune-hpo-bench": ["ray[tune]>=2", "Pandas", "torch", "pytest; extra == 'test'",
                           "tomli; python_version < '3.11'"],
    "ray": ["click", "pandas; extra == 'tune'", "tensorboardX; extra == 'tune'"],
    "pandas": ["numpy", "tzdata"], "torch": ["sympy", "numpy", "filelock"],
    "pytest": ["pluggy"], "click": [], "tensorboardx": ["filelock"], "pluggy": [],
    "numpy": [], "tzdata": [], "sympy": [], "filelock": [], "tomli": [],
})


def test_wheels_chosen_are_those_reachable_past_what_the_target_has():
    env = wheelhouse.marker_env("3.12")
    chosen = wheelhouse.needed(REPORT, "finetune-hpo-bench", ("test",), {"pandas", "torch"}, env)
    # numpy, tzdata and sympy only through pandas or torch; filelock also through tensorboardX
    assert set(chosen) == {"finetune-hpo-bench", "ray", "click", "tensorboardx", "filelock",
                           "pytest", "pluggy"}
    everything = wheelhouse.needed(REPORT, "finetune-hpo-bench", (), set(), env)
    assert "pytest" not in everything and "tomli" not in everything
    assert {"numpy", "sympy", "tzdata"} <= set(everything)
    older = wheelhouse.needed(REPORT, "finetune-hpo-bench", (), set(),
                              wheelhouse.marker_env("3.10"))
    assert "tomli" in older


def test_have_reads_a_list_or_a_pip_freeze_file(tmp_path):
    assert wheelhouse.parse_have("torch==2.11.0, Scipy,nvidia_ml_py") == {
        "torch": "2.11.0", "scipy": None, "nvidia-ml-py": None}
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# the GPU node\ntorch==2.11.0+cu128\n-e /src/thing\n"
                      "pyarrow @ file:///wheels/pyarrow.whl\nPandas==2.2.3\n\n")
    assert wheelhouse.parse_have(str(freeze)) == {
        "torch": "2.11.0", "pyarrow": None, "pandas": "2.2.3"}


def test_parts_stay_under_their_size_and_offline_joins_the_pieces(tmp_path):
    sizes = {"a": 60, "b": 50, "c": 30, "d": 20, "e": 10, "huge": 190}
    wheels = {f"{n}-1-py3-none-any.whl": bytes(range(256))[:size] for n, size in sizes.items()}
    for name, data in wheels.items():
        (tmp_path / name).write_bytes(data)
    parts, cut = wheelhouse.split_parts(tmp_path, 80)
    assert not list(tmp_path.glob("*.whl"))
    for folder in tmp_path.glob("part-*"):
        assert sum(f.stat().st_size for f in folder.iterdir()) <= 80
    assert cut["huge-1-py3-none-any.whl"]["pieces"] == 3  # 80 + 80 + 30
    assert len(sum(parts, [])) == 5 + 3
    _manifest(tmp_path, "%d.%d" % sys.version_info[:2], sorted(wheels), cut=cut)
    folders = wheelhouse.wheel_folders(tmp_path)
    found = {w.name: w.read_bytes() for folder in folders for w in folder.glob("*.whl")}
    assert found == wheels  # every wheel, the cut one joined whole again
    piece = next(tmp_path.glob("part-*/huge-1-py3-none-any.whl.piece-002"))
    piece.write_bytes(b"x" * piece.stat().st_size)
    (tmp_path / "joined" / "huge-1-py3-none-any.whl").unlink()
    with pytest.raises(wheelhouse.UsageError, match="pieces of huge-1"):
        wheelhouse.wheel_folders(tmp_path)
    piece.unlink()
    with pytest.raises(wheelhouse.UsageError, match="lacks 1 of its 6 wheels"):
        wheelhouse.wheel_folders(tmp_path)


def _manifest(folder: Path, python_version: str, wheels: list[str], cut=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wheelhouse.json").write_text(json.dumps(
        {"python_version": python_version, "wheels": wheels, "cut": cut or {}}))


def test_offline_refuses_a_wheelhouse_for_another_python(tmp_path):
    _manifest(tmp_path / "wh", "3.99", [])
    result = _install("--offline", "wh", tmp_path=tmp_path)  # relative to the caller's folder
    assert result.returncode == 2 and "wheels for Python 3.99" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "venv").exists()


def test_offline_refuses_a_wheelhouse_with_a_part_missing(tmp_path):
    wheels = ["a-1-py3-none-any.whl", "b-1-py3-none-any.whl"]
    part = tmp_path / "wh" / "part-1"
    _manifest(part, _host_python(), wheels)
    (part / wheels[0]).write_bytes(b"")
    result = _install("--offline", str(tmp_path / "wh"), tmp_path=tmp_path)
    assert result.returncode == 2 and "lacks 1 of its 2 wheels" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "venv").exists()


def test_a_wheel_for_a_newer_python_is_refused_for_the_target():
    report = {"install": [{"metadata": {"name": "numpy", "version": "2.9",
                                        "requires_python": ">=3.13"}}]}
    wheelhouse._check_requires_python(report, "3.13")
    with pytest.raises(wheelhouse.UsageError, match="numpy 2.9 needs Python >=3.13, not 3.12"):
        wheelhouse._check_requires_python(report, "3.12")
