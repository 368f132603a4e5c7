"""Builds a wheelhouse for an air-gapped install (`./install.sh --wheelhouse DIR`).

DIR receives every wheel the harness needs that the target machine does not already have, for
the target's Python, so that `./install.sh --offline DIR` installs with no network. Runs on the
machine with internet, with any Python >= 3.9 and pip >= 22.2 (no harness installed: it cannot
use bench.contract.errors, so bad input is one line on stderr and exit 2 here too).

How: pip resolves the whole tree for the target (`pip install --dry-run --report`, which reads
wheel metadata without downloading the wheels); the wheels kept are those reachable from the
harness without passing through a package the target has; pip downloads exactly those. Ray's
`ray/jars` (Java workers, never used from Python; 33 MiB) is cut out of its wheel.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:  # every pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
HARNESS = "finetune-hpo-bench"
EXTRAS = ("test",)
# Built against one torch/CUDA pairing: the target installs them the way its torch came.
TORCH_FAMILY = ("torch", "torchvision")
# Declares tensorflow, which its data files do not need (install.sh installs it --no-deps).
NO_DEPS = ("animal-mnist==0.4",)
# manylinux up to glibc 2.28, the floor of torch's own wheels; pip 23 does not expand
# manylinux_2_28 to older tags itself.
PLATFORMS = ([f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
JARS = "ray/jars/"
PIECE = ".piece-"  # NAME.whl.piece-001: a wheel larger than a part, cut
SOURCES = ("pyproject.toml", "README.md", "bench", "baselines", "methods")  # what the wheel holds
HAVE_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?(?:==([^\s;,]+))?$")


class UsageError(Exception):
    """Bad input: one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"install.sh: {message}", file=sys.stderr)
        sys.exit(2)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_have(spec: str) -> dict[str, str | None]:
    """What the target has: a comma list (`torch==2.11.0,pandas`) or a `pip freeze` file."""
    path = Path(spec)
    if path.is_file():
        entries = []
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):  # -e editable checkouts, pip options
                continue
            entries.append(line.split(" @ ", 1)[0].strip())  # `name @ file://...`: name only
    else:
        entries = [e.strip() for e in spec.split(",") if e.strip()]
    have: dict[str, str | None] = {}
    for entry in entries:
        match = HAVE_ENTRY.match(entry)
        if not match:
            raise UsageError(f"--have: {entry!r} is neither NAME nor NAME==VERSION "
                             "(give a comma list or a pip freeze file)")
        version = match.group(2)
        have[normalize(match.group(1))] = version.split("+", 1)[0] if version else None
    return have


def marker_env(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of a CPython on x86-64 Linux."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_release": "",
            "platform_version": "", "implementation_version": f"{python_version}.0"}


def needed(report: dict, root: str, extras: tuple[str, ...], have: set[str],
           env: dict[str, str]) -> dict[str, str]:
    """Name -> version of every package reachable from ``root`` not through one in ``have``."""
    resolved = {normalize(item["metadata"]["name"]): item["metadata"]
                for item in report["install"]}
    found: dict[str, set[str]] = {}
    queue = [(normalize(root), set(extras))]
    while queue:
        name, wanted = queue.pop()
        if name in have:
            continue
        if name in found and wanted <= found[name]:
            continue
        found[name] = found.get(name, set()) | wanted
        if name not in resolved:
            raise UsageError(f"pip's resolution lacks {name}, which the harness needs")
        for text in resolved[name].get("requires_dist", []):
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({**env, "extra": extra})
                                      for extra in found[name] | {""}):
                continue
            queue.append((normalize(req.name), set(req.extras)))
    return {name: resolved[name]["version"] for name in sorted(found)}


def _check_requires_python(report: dict, python_version: str) -> None:
    target = f"{python_version}.0"
    for item in report["install"]:
        meta = item["metadata"]
        if not SpecifierSet(meta.get("requires_python") or "").contains(target, prereleases=True):
            raise UsageError(f"{meta['name']} {meta['version']} needs Python "
                             f"{meta['requires_python']}, not {python_version}: run "
                             f"./install.sh --wheelhouse with Python {python_version} itself")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _is_record(path: str) -> bool:
    """The wheel's own RECORD (Ray vendors packages with their RECORDs deeper down)."""
    folder, _, name = path.partition("/")
    return folder.endswith(".dist-info") and name == "RECORD"


def drop_jars(wheel: Path) -> int:
    """Rewrites ``wheel`` without ray/jars (its RECORD rewritten to match); bytes dropped."""
    with zipfile.ZipFile(wheel) as src:
        infos = src.infolist()
        dropped = sum(i.file_size for i in infos if i.filename.startswith(JARS))
        if not dropped:
            return 0
        tmp = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for info in infos:
                if info.filename.startswith(JARS):
                    continue
                data = src.read(info)
                if _is_record(info.filename):
                    rows = data.decode().splitlines(keepends=True)
                    data = "".join(r for r in rows if not r.startswith(JARS)).encode()
                out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(wheel)
    return dropped


def check_record(wheel: Path) -> None:
    """Every file of ``wheel`` is in its RECORD with its hash, and every RECORD row is a file."""
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        record = next(n for n in names if _is_record(n))
        rows = [r.rsplit(",", 2) for r in whl.read(record).decode().splitlines() if r]
        listed = {path for path, _, _ in rows}
        if listed != names:
            raise ValueError(f"{wheel.name}: RECORD and files differ: {sorted(listed ^ names)[:3]}")
        for path, digest, _ in rows:
            if digest and _record_hash(whl.read(path)) != digest:
                raise ValueError(f"{wheel.name}: {path} does not match its RECORD hash")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _target_args(python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def _cut(wheel: Path, piece_bytes: int) -> list[Path]:
    """Cuts ``wheel`` into NAME.whl.piece-001, -002, ... of at most ``piece_bytes``."""
    pieces = []
    with wheel.open("rb") as whole:
        while chunk := whole.read(piece_bytes):
            pieces.append(wheel.with_name(f"{wheel.name}{PIECE}{len(pieces) + 1:03d}"))
            pieces[-1].write_bytes(chunk)
    wheel.unlink()
    return pieces


def split_parts(out: Path, part_bytes: int) -> tuple[list[list[str]], dict[str, dict]]:
    """Moves the wheels of ``out`` into out/part-1, part-2, ..., each at most ``part_bytes``
    (largest first, each into the first part with room): for transports with a size limit.
    A wheel larger than a part travels in pieces, joined again by --offline; the parts' file
    names and, per wheel cut, its pieces' count and sha256."""
    cut = {}
    for wheel in out.glob("*.whl"):
        if wheel.stat().st_size > part_bytes:
            cut[wheel.name] = {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                               "pieces": len(_cut(wheel, part_bytes))}
    parts: list[list[Path]] = []
    files = [*out.glob("*.whl"), *out.glob(f"*.whl{PIECE}*")]
    for item in sorted(files, key=lambda w: (-w.stat().st_size, w.name)):
        size = item.stat().st_size
        fits = [p for p in parts if sum(w.stat().st_size for w in p) + size <= part_bytes]
        if not fits:
            parts.append([])
            fits = [parts[-1]]
        fits[0].append(item)
    names = []
    for index, items in enumerate(parts, 1):
        folder = out / f"part-{index}"
        folder.mkdir()
        for item in items:
            item.rename(folder / item.name)
        names.append(sorted(w.name for w in items))
    return names, cut


def _join(root: Path, folders: list[Path], cut: dict[str, dict]) -> list[str]:
    """Joins each cut wheel whose pieces are all there into root/joined; the wheels that
    lack a piece."""
    lacking = []
    for wheel, info in sorted(cut.items()):
        names = [f"{wheel}{PIECE}{i:03d}" for i in range(1, info["pieces"] + 1)]
        found = {p.name: p for folder in folders for p in folder.glob(f"{wheel}{PIECE}*")}
        if not set(names) <= set(found):
            lacking.append(wheel)
            continue
        joined = root / "joined" / wheel
        if joined.is_file() and hashlib.sha256(joined.read_bytes()).hexdigest() == info["sha256"]:
            continue
        joined.parent.mkdir(exist_ok=True)
        data = b"".join(found[name].read_bytes() for name in names)
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise UsageError(f"--offline: the pieces of {wheel} do not make the wheel cut "
                             "(a piece damaged or from another wheelhouse)")
        joined.write_bytes(data)
    return lacking


def _is_ours(path: Path) -> bool:
    """What an earlier build left in its directory (and a new build replaces)."""
    return (path.suffix == ".whl" or path.name == "wheelhouse.json"
            or (path.is_dir() and (path.name.startswith("part-") or path.name == "joined")))


def _refuse_foreign(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--wheelhouse: {out} is a file, not a directory")
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p)) if out.is_dir() else []
    if foreign:
        raise UsageError(f"--wheelhouse: {out} holds other files ({foreign[0]}, ...): "
                         "give a new or empty directory, or an earlier wheelhouse")


def _fill(out: Path, python_version: str, have: dict[str, str | None],
          part_bytes: int | None) -> dict:
    """Downloads into the empty directory ``out``; its manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "source")  # a clean copy: no stale build/ of the checkout leaks in
        for part in SOURCES:
            if (ROOT / part).is_dir():
                shutil.copytree(ROOT / part, source / part,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                source.mkdir(exist_ok=True)
                shutil.copy2(ROOT / part, source / part)
        _pip("wheel", "-q", "--no-deps", "-w", str(out), str(source))
        harness = next(out.glob("finetune_hpo_bench-*.whl"))
        report_path = Path(tmp, "report.json")
        constraints = Path(tmp, "constraints.txt")  # the target's versions: what we add fits them
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in have.items() if v))
        # pip install (23.2) checks Requires-Python against the Python running it, not the
        # target's: told to ignore it, then checked against the target's below.
        _pip("install", "-q", "--dry-run", "--ignore-installed", "--ignore-requires-python",
             "--report", str(report_path), "--target", str(Path(tmp, "target")),
             *_target_args(python_version), "-c", str(constraints),
             f"{harness}[{','.join(EXTRAS)}]")
        report = json.loads(report_path.read_text())
    _check_requires_python(report, python_version)
    wanted = needed(report, HARNESS, EXTRAS, set(have), marker_env(python_version))
    wanted.pop(normalize(HARNESS))
    # The offline build of the editable checkout needs setuptools in the wheelhouse itself.
    pins = [f"{n}=={v}" for n, v in wanted.items()]
    if "setuptools" not in wanted:
        pins.append("setuptools>=68")
    _pip("download", "-q", "--no-deps", "-d", str(out), *_target_args(python_version),
         *pins, *NO_DEPS)
    dropped = 0
    for ray_wheel in out.glob("ray-*.whl"):
        dropped += drop_jars(ray_wheel)
        check_record(ray_wheel)
    wheels = sorted(p.name for p in out.glob("*.whl"))
    manifest = {"python_version": python_version, "platforms": PLATFORMS,
                "left_out": {n: v for n, v in sorted(have.items())},
                "ray_jars_dropped_bytes": dropped, "wheels": wheels,
                "bytes": sum((out / w).stat().st_size for w in wheels),
                "parts": [], "cut": {}}
    if part_bytes:
        manifest["parts"], manifest["cut"] = split_parts(out, part_bytes)
    text = json.dumps(manifest, indent=1) + "\n"
    for folder in [out, *out.glob("part-*")]:  # each part says what it belongs to
        (folder / "wheelhouse.json").write_text(text)
    return manifest


def build(out: Path, python_version: str, have: dict[str, str | None],
          part_bytes: int | None = None) -> dict:
    """Fills ``out`` anew; on failure, ``out`` is left as it was (an earlier wheelhouse stays)."""
    _refuse_foreign(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = _fill(staging, python_version, have, part_bytes)
        out.mkdir(exist_ok=True)
        for old in filter(_is_ours, list(out.iterdir())):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        for new in staging.iterdir():
            new.rename(out / new.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def wheel_folders(root: Path) -> list[Path]:
    """The folders of wheelhouse ``root`` (itself, its parts, the wheels joined from pieces)
    for this Python; refuses a wheelhouse made for another Python or with parts missing."""
    manifests = [root / "wheelhouse.json", *sorted(root.glob("part-*/wheelhouse.json"))]
    manifest_path = next((m for m in manifests if m.is_file()), None)
    if not root.is_dir() or manifest_path is None:
        raise UsageError(f"--offline: {root} is not a wheelhouse (no wheelhouse.json; "
                         "make one with ./install.sh --wheelhouse)")
    manifest = json.loads(manifest_path.read_text())
    here = "%d.%d" % sys.version_info[:2]
    if manifest["python_version"] != here:
        raise UsageError(f"--offline: {root} holds wheels for Python "
                         f"{manifest['python_version']}, this Python is {here}")
    folders = [root, *sorted(p for p in root.glob("part-*") if p.is_dir())]
    cut = manifest.get("cut", {})
    lacking = _join(root, folders, cut)
    folders.append(root / "joined")
    present = {w.name for folder in folders for w in folder.glob("*.whl")}
    missing = sorted(set(manifest["wheels"]) - present - set(cut) | set(lacking))
    if missing:
        raise UsageError(f"--offline: {root} lacks {len(missing)} of its "
                         f"{len(manifest['wheels'])} wheels ({missing[0]}, ...): "
                         "copy all of its parts")
    return [folder for folder in folders if folder.is_dir()]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=OneLineParser)
    make = commands.add_parser("build", help="download the wheels into DIR")
    make.add_argument("dir", type=Path)
    make.add_argument("--python-version", default="%d.%d" % sys.version_info[:2])
    make.add_argument("--have", default="",
                      help="what the target has: NAME[==VERSION],... or a pip freeze file")
    make.add_argument("--with-torch", action="store_true",
                      help="also download torch, torchvision and their CUDA libraries")
    make.add_argument("--part-size", type=float, metavar="MIB",
                      help="spread the wheels over DIR/part-1, part-2, ..., each <= MIB "
                      "(a larger wheel in pieces)")
    check = commands.add_parser("folders", help="check DIR for this Python; its wheel folders")
    check.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped build cleans up
    try:
        if args.command == "folders":
            print("\n".join(str(folder) for folder in wheel_folders(args.dir)))
            return 0
        if not re.fullmatch(r"3\.\d{1,2}", args.python_version) or \
                int(args.python_version.split(".")[1]) < 11:
            raise UsageError(f"--python-version: {args.python_version!r} is not 3.11 or later "
                             "(the harness needs Python >= 3.11)")
        if args.part_size is not None and args.part_size <= 0:
            raise UsageError(f"--part-size: {args.part_size} is not a positive size in MiB")
        have = parse_have(args.have)
        if not args.with_torch:
            for name in TORCH_FAMILY:
                have.setdefault(name, None)
        part_bytes = int(args.part_size * 2**20) if args.part_size else None
        manifest = build(args.dir, args.python_version, have, part_bytes)
    except UsageError as err:
        print(f"install.sh: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"install.sh: pip failed (exit {err.returncode}); see its message above",
              file=sys.stderr)
        return 1
    mib = manifest["bytes"] / 2**20
    print(f"wheelhouse {args.dir}: {len(manifest['wheels'])} wheels, {mib:.1f} MiB, "
          f"for Python {args.python_version}; left out: {', '.join(manifest['left_out'])}"
          + (f"; in {len(manifest['parts'])} parts" if manifest["parts"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
