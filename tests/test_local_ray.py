"""The local Ray a suite starts (no --address): nothing of it listens beyond loopback, and
SIGTERM stops the driver as Ctrl-C does (one line saying how to resume, exit status 143)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.contract import schema as S
from bench.driver import ray_processes
from bench.records.journal import read_journal

ROOT = Path(__file__).resolve().parents[1]

# one worker and trials enough that the suite is still running when the test looks at it
SUITE = """name = "local"
[budget]
workers = 1
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
image_size = 8
batch_size = 16
[methods.random]
trials = 4
"""


def _address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp[6]: hex, each 32-bit word in host (little-endian) order."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket the processes hold."""
    found = []
    for pid in pids:
        try:
            inodes = set()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:  # closed meanwhile
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:["):-1])
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for table in ("tcp", "tcp6"):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        found.append((name, *_address(fields[1])))
        except OSError:  # the process ended meanwhile
            continue
    return found


def _loopback(host: str) -> bool:
    return host == "::1" or host.removeprefix("::ffff:").startswith("127.")


def test_the_proc_net_addresses_are_read_in_host_order():
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000:0050") == ("0.0.0.0", 80)
    assert _address("00000000000000000000000000000000:0016") == ("::", 22)
    assert _address("0000000000000000FFFF00000100007F:0016") == ("::ffff:127.0.0.1", 22)
    assert _address("00000000000000000000000001000000:0016") == ("::1", 22)


@pytest.mark.ray
def test_the_local_ray_listens_on_loopback_only_and_sigterm_leaves_a_run_to_resume(tmp_path):
    suite, out = tmp_path / "local.toml", tmp_path / "out"
    suite.write_text(SUITE)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--out",
                             str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # only against a hang: a loaded machine is slow
        while proc.poll() is None and not (
                (out / S.JOURNAL_FILE).is_file()
                and '"complete"' in (out / S.JOURNAL_FILE).read_text()):
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        ours = [proc.pid] + ray_processes.descendants(proc.pid)  # the driver's Ray, workers
        sockets = listening(ours)
    finally:
        proc.send_signal(signal.SIGTERM)  # the driver this test started
        said, err = proc.communicate(timeout=300)
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the listing sees Ray's servers
    assert [s for s in sockets if not _loopback(s[1])] == [], sockets

    # SIGTERM: the resume hint as the one line of its own, exit 143, nothing of Ray's
    hint = f"bench: terminated (SIGTERM); go on with: bench run {suite} --resume {out}"
    assert proc.returncode == 143, err
    assert err.rstrip("\n").splitlines()[-1] == hint, err
    assert "SIGTERM" not in err.replace(hint, ""), err
    events, _ = read_journal(out / S.JOURNAL_FILE)
    assert all(e["row"][S.STATUS] == S.OK for e in events if e["event"] == "complete")
    assert main(["run", str(suite), "--resume", str(out), "--quiet"]) == 0
    assert ray_processes.LOOPBACK_ENV not in os.environ  # switched back after ray.init
