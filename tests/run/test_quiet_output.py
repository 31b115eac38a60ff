"""A default run (W&B offline) prints no library advertising or deprecation noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_default_run_prints_no_tips_and_no_wandb_anonymous_warning(tiny: list[str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_MODE": "offline",
        "DGLBACKEND": "pytorch",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedshare.train", *tiny, "fed.rounds=2", f"paths.output_dir={run}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert list((run / "wandb").glob("offline-run-*")), "the run must log to W&B (offline)"
    for noise in ("litlogger", "litmodels", "anonymous"):
        assert noise not in output, f"{noise!r} printed:\n{output}"
    assert "GPU available" in output  # Lightning's other messages still reach the user
