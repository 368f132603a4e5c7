#!/usr/bin/env bash
# Installs everything the harness needs: Debian's Fashion-MNIST package and a virtual
# environment (./.venv, or $BENCH_VENV) with this project and its dependencies.
# Safe to run again: what is already there is kept.
set -euo pipefail
caller=$PWD  # DIR and a --have file are relative to where the script was called from
cd "$(dirname "$0")"
venv=${BENCH_VENV:-.venv}

quiet() {  # run a command, hiding pip's notes about this machine's local package indexes
    "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}

usage() {
    cat <<'EOF'
Usage: ./install.sh                 Debian's dataset-fashion-mnist, and .venv (or $BENCH_VENV)
                                    with the harness (editable) and its dependencies, online
       ./install.sh --wheelhouse DIR [--python-version X.Y] [--have LIST|FILE] [--with-torch]
                    [--part-size MIB]
                                    download into DIR every wheel the harness needs that the
                                    target lacks (needs network; installs nothing here)
       ./install.sh --offline DIR   install from wheelhouse DIR with no network: .venv (or
                                    $BENCH_VENV; a new one sees python3's own packages, its
                                    torch, even where python3 is itself a virtual environment)
                                    with the harness (editable)
       ./install.sh --help

--wheelhouse options:
  --python-version X.Y  the target's Python (default: this python3's); wheels for CPython
                        on x86-64 Linux, manylinux up to glibc 2.28
  --have LIST|FILE      what the target already has, left out of DIR with whatever only they
                        need: NAME[==VERSION],... or the target's `pip freeze` output in a
                        file; given versions are kept fixed when choosing the rest
  --with-torch          also download torch, torchvision and their CUDA libraries (left out
                        by default: the target installs them the way its CUDA wants)
  --part-size MIB       spread the wheels over DIR/part-1, DIR/part-2, ..., each at most
                        MIB, a larger wheel cut in pieces (for a transport with a size
                        limit; --offline joins the pieces and reads all parts)
Ray's wheel is repacked without ray/jars (Java workers, not used from Python). Debian's
dataset-fashion-mnist is not a wheel: --offline leaves it out and says what needs it.
EOF
}

fail() {  # bad input: one line, exit 2, nothing written
    echo "install.sh: $1 (see ./install.sh --help)" >&2
    exit 2
}

mode=online dir="" build_args=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --wheelhouse|--offline)
            [ "$mode" = online ] || fail "give one of --wheelhouse and --offline, once"
            [[ ${2:-} && ${2:-} != -* ]] || fail "$1 needs a directory"
            mode=${1#--} dir=$2; shift 2
            [[ $dir = /* ]] || dir=$caller/$dir ;;
        --python-version|--have|--part-size)
            [[ ${2:-} && ${2:-} != -* ]] || fail "$1 needs a value"
            [[ $1 != --python-version || $2 =~ ^3\.[0-9]+$ ]] \
                || fail "--python-version takes X.Y, such as 3.12, not $2"
            [[ $1 != --part-size || $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] \
                || fail "--part-size takes a size in MiB, such as 60, not $2"
            value=$2
            [[ $1 != --have || $value = /* || ! -f $caller/$value ]] || value=$caller/$value
            build_args+=("$1" "$value"); shift 2 ;;
        --with-torch) build_args+=("$1"); shift ;;
        *) fail "unknown argument: $1" ;;
    esac
done
if [ ${#build_args[@]} -gt 0 ] && [ "$mode" != wheelhouse ]; then
    fail "${build_args[0]} goes with --wheelhouse DIR"
fi

if [ "$mode" = wheelhouse ]; then
    exec python3 scripts/wheelhouse.py build "$dir" "${build_args[@]}"
fi

if [ "$mode" = offline ]; then
    # Only the wheelhouse: no index, no pip configuration or PIP_* variables of this machine.
    for name in $(compgen -e); do [[ $name != PIP_* ]] || unset "$name"; done
    export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    host=python3; [ ! -x "$venv/bin/python" ] || host=$venv/bin/python
    folders=$("$host" scripts/wheelhouse.py folders "$dir") || exit 2
    export PIP_FIND_LINKS=${folders//$'\n'/ }
    if [ ! -x "$venv/bin/python" ]; then
        [ ! -e "$venv" ] || fail "$venv exists and is not a virtual environment"
        # python3's packages seen from the new venv through a .pth file: --system-site-packages
        # would miss them where python3 is itself a venv (as on our GPU nodes).
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            echo "note: python3 has no ensurepip: $venv gets no pip of its own; python3's pip" \
                 "installs into it"
            rm -rf "$venv" && python3 -m venv --without-pip "$venv"
        }
        purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        python3 -c 'import site; print("import site; " + "; ".join(
            f"site.addsitedir({d!r})" for d in site.getsitepackages()))' \
            >"$purelib/_python3_packages.pth"
    fi
    pip=("$venv/bin/python" -m pip)
    "${pip[@]}" --version >/dev/null 2>&1 || pip=(python3 -m pip --python "$venv/bin/python")
    # Built with the wheelhouse's setuptools in the venv: an isolated build would also see
    # python3's packages through the .pth, its older setuptools among them.
    "${pip[@]}" install -q --ignore-installed --no-deps 'setuptools>=68'
    "${pip[@]}" install -q --no-build-isolation -e '.[test]'
    "${pip[@]}" install -q --no-deps animal-mnist==0.4
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        echo "note: Debian's dataset-fashion-mnist (not a wheel) is not installed: the" \
             "small-cnn backbone and the fashion-mnist data set need it (apt-get install" \
             "dataset-fashion-mnist, or its .deb copied here); efficientnet-lite0 and" \
             "animal-mnist do not"
    fi
    echo "installed into $venv from $dir, offline"
    exit 0
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    quiet $sudo apt-get update -qq
    quiet $sudo apt-get install -y -qq dataset-fashion-mnist
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
quiet "$venv/bin/python" -m pip install -q -e '.[test]'
# animal-mnist declares tensorflow as a dependency it does not need for its data files.
quiet "$venv/bin/python" -m pip install -q --no-deps animal-mnist==0.4
echo "installed into $venv"
