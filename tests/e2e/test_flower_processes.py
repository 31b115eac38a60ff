"""Flower end to end with real processes: a SuperLink and two SuperNodes on 127.0.0.1, the
launcher, a killed node, a failing ServerApp, Ctrl-C and SIGTERM; every socket stays local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedshare.config import compose
from fedshare.flower.launch import compose_args, processes_with_home
from fedshare.train import train
from tests.flower.test_flower import _close

ROOT = Path(__file__).resolve().parents[2]


def _launch(args: list[str], tmp_path: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, DGLBACKEND="pytorch", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fedshare.flower", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _inet_sockets(pids: list[int]) -> list[tuple[str, str]]:
    """(local, remote) IPv4/IPv6 addresses of every TCP socket the processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                found.append((_addr(cols[1]), _addr(cols[2])))
    return found


def _addr(hex_addr: str) -> str:
    host = hex_addr.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # /proc stores 4 little-endian words
    return bytes(b for w in words for b in w).hex()


def _local_only(addr: str) -> bool:
    ipv4_mapped_loopback = "00000000000000000000ffff7f000001"
    return addr in ("127.0.0.1", "0.0.0.0", "0" * 32, "0" * 31 + "1", ipv4_mapped_loopback)


def _e2e_args(tiny: list[str], out: Path, *extra: str) -> list[str]:
    return [
        *tiny,
        "nodes=2",
        "fed.rounds=2",
        "eval.every=2",
        "logger=none",
        f"paths.output_dir={out}",
        *extra,
    ]


def test_e2e_two_supernodes_equal_the_in_process_run(tiny: list[str], tmp_path: Path) -> None:
    """Learning, then unsharing with contrastive unlearning and plain deletion, on 2 SuperNodes."""
    out = tmp_path / "flower"
    extra = ("unlearn.methods=[contrastive,delete_only]", "unlearn.contrastive.steps=10")
    proc = _launch(_e2e_args(tiny, out, *extra), tmp_path)
    text, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, text[-3000:]
    assert not processes_with_home(out / "flower" / "home"), "a Flower process outlived the launcher"
    inproc = tmp_path / "inproc"
    expected, _ = train(compose([*compose_args(_e2e_args(tiny, inproc, *extra))]))
    got = json.loads((out / "metrics.json").read_text())
    timing = [k for k in expected if k.endswith("/time_s")]
    assert "unlearn/contrastive/test/recall@20" in got and "test/recall@20" in got
    assert not _close(
        {k: v for k, v in expected.items() if k not in timing},
        {k: v for k, v in got.items() if k not in timing},
        1e-4,
    )
    # the same run folder: config, metrics, history, snapshots, and a checkpoint Lightning loads
    for name in ("config.yaml", "metrics.json", "history.json", "command.txt", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    snaps = sorted(p.name for p in (out / "unlearn" / "contrastive" / "snapshots").iterdir())
    assert snaps == sorted(p.name for p in (inproc / "unlearn" / "contrastive" / "snapshots").iterdir())
    from lightning_modules.fedshare import FedShareModule

    loaded = FedShareModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    ref = torch.load(inproc / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key, value in loaded.state_dict().items():
        assert torch.allclose(value, ref[key].cpu(), atol=1e-5), key
    toml = (out / "flower" / "home" / "config.toml").read_text()
    assert 'address = "127.0.0.1:' in toml and ":local:" not in toml


def test_e2e_a_killed_supernode_is_skipped(tiny: list[str], tmp_path: Path) -> None:
    out = tmp_path / "flower"
    proc = _launch(_e2e_args(tiny, out, "fed.rounds=2", "eval.every=5", "flower.round_timeout=30"), tmp_path)
    home = out / "flower" / "home"
    lines = []
    killed = None
    for line in proc.stdout:
        lines.append(line)
        if killed is None and "[fedshare] round 1/2" in line:
            for pid in processes_with_home(home):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"flower-supernode" in cmd and b"shard=1 " in cmd:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
    proc.wait(timeout=300)
    text = "".join(lines)
    assert killed is not None, text[-3000:]
    assert proc.returncode == 0, text[-3000:]
    assert "shard 1 lost in train 2" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flower/lost_shard/1"] == 2.0 and 0 < metrics["test/recall@20"] <= 1
    assert not processes_with_home(home)


def test_e2e_a_serverapp_failure_fails_the_launch(tiny: list[str], tmp_path: Path) -> None:
    """`flwr run --stream` exits 0 when the ServerApp crashes: the launcher reads the run's
    status and fails with the ServerApp's error (here: the nodes cannot read the data)."""
    out = tmp_path / "flower"
    args = ["nodes=2", "fed.rounds=2", "logger=none", f"paths.output_dir={out}", "data=ml-100k"]
    args += [f"data.root={tmp_path / 'nowhere'}", "data.download.url=null"]
    proc = _launch(args, tmp_path)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, text[-3000:]
    assert "did not complete" in text and "setup failed" in text
    assert not processes_with_home(out / "flower" / "home")


@pytest.mark.parametrize(
    "sig, when",
    [(signal.SIGINT, "[fedshare] round 1/50"), (signal.SIGTERM, "Successfully started run")],
    ids=["ctrl-c-mid-round", "kill-while-setting-up"],
)
def test_e2e_ctrl_c_stops_every_process_and_traffic_stays_local(
    tiny: list[str], tmp_path: Path, sig, when: str
) -> None:
    out = tmp_path / "flower"
    proc = _launch(_e2e_args(tiny, out, "fed.rounds=50"), tmp_path)
    for line in proc.stdout:
        if when in line:
            break
    # mid-run: every socket of every process the launcher started is on 127.0.0.1
    sockets = _inet_sockets(processes_with_home(out / "flower" / "home"))
    assert sockets and all(_local_only(a) and _local_only(b) for a, b in sockets), sockets
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, text[-3000:]
    time.sleep(0.5)
    assert not processes_with_home(out / "flower" / "home")
