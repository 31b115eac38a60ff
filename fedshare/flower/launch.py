"""python -m fedshare.flower [nodes=N] [GROUP=NAME ...] [key=value ...]

Runs FedShare on Flower's deployment engine on this machine: starts a SuperLink and N
SuperNodes (shard k of N each) on 127.0.0.1, runs the app (`fedshare.flower.apps`) with
`flwr run`, checks the run's final status, joins the outputs into the run folder, and stops
every process it started: on success, on failure and on Ctrl-C.

Same keys as ``python -m fedshare.train`` (``nodes=N`` is short for ``fed.nodes=N``; the
experiment defaults to ``fedshare``); ``flower.*`` keys set ports, deadlines and an external
SuperLink (``flower.superlink=HOST:PORT``: nothing is started here, the SuperNodes run on
other hosts; see the README). A run with ``fed.nodes=N`` ends with the same metrics as the
in-process ``python -m fedshare.train`` with the same keys.

Flower's environment is pinned: no telemetry, no update check, no runtime dependency
installation; ``FLWR_HOME`` (the connection in ``config.toml``, installed apps) and ``TMPDIR``
are inside the run folder (``flower/``), and the connection is an address on 127.0.0.1, never
Flower's ``:local:`` one (that one starts a Ray simulation).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from fedshare import __version__
from fedshare.atomic import replace_file, write_text
from fedshare.config import ConfigError, compose
from fedshare.data.readers import DatasetError
from fedshare.federated.fedmf import round_purpose
from fedshare.run import driver
from fedshare.run.folder import RunFolderError, run_dir_for
from fedshare.run.logger import build_logger
from fedshare.unlearning.registry import names

log = logging.getLogger("fedshare.flower")

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "DGLBACKEND": "pytorch",
    # the SuperExec looks for a new ClientApp/ServerApp task every 1 s by default; a round
    # waits for it on every node
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}
CONNECTION = "fedshare"  # the connection's name in $FLWR_HOME/config.toml

APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedshare-flower"
version = "{version}"
description = "FedShare on Flower: the ServerApp and ClientApp live in the installed fedshare package"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedshare"

[tool.flwr.app.components]
serverapp = "fedshare.flower.apps:server_app"
clientapp = "fedshare.flower.apps:client_app"

[tool.flwr.app.config]
run-dir = ""
"""


class LaunchError(RuntimeError):
    """Flower could not be started, or the run did not complete."""


class Stopped(BaseException):
    """The launcher got SIGTERM or SIGHUP (a BaseException, as KeyboardInterrupt: it unwinds
    through every ``except Exception``, and the launch's ``finally`` stops the processes)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def free_ports(n: int) -> list[int]:
    """``n`` ports on 127.0.0.1 that are free now (the OS picks them)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bin(name: str) -> str:
    """Flower's console scripts next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def processes_with_home(home: Path) -> list[int]:
    """Pids of every process whose environment has ``FLWR_HOME=home``: everything this
    launcher started, and their children (they inherit it)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get("FLWR_HOME") == str(home):
                found.append(proc.pid)
        except (psutil.Error, OSError):  # gone, a zombie, or another user's
            continue
    return found


class FlowerLaunch:
    """The processes of one run; a context manager that always stops them all."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.dir = run_dir / "flower"
        self.home, self.tmp, self.logs = self.dir / "home", self.dir / "tmp", self.dir / "logs"
        self.app = self.dir / "app"
        self.nodes = int(cfg.fed.nodes)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.external = cfg.flower.superlink
        if self.external:
            self.address = str(self.external)
        else:
            base = int(cfg.flower.port)
            ports = free_ports(self.nodes + 1) if base == 0 else list(range(base, base + self.nodes + 1))
            busy = [port for port in ports if not port_is_free(port)]
            if busy:
                raise LaunchError(
                    f"flower.port={base}: 127.0.0.1 port(s) {busy} are in use (the SuperLink takes flower.port, "
                    f"the SuperNodes the next {self.nodes}); pick other ports, or flower.port=0 for free ones"
                )
            self.address, self.node_ports = f"127.0.0.1:{ports[0]}", ports[1:]
        for d in (self.home, self.tmp, self.logs, self.app):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(FLOWER_ENV)
        self.env.update({"FLWR_HOME": str(self.home), "TMPDIR": str(self.tmp)})
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        root = str(Path(__file__).resolve().parents[2])  # the checkout, for a non-installed fedshare
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH")) if p)
        # torch threads of each node (they train at the same time) and of the ServerApp (a child
        # of the SuperLink): a pool as wide as the machine stalls whenever another job holds a
        # core (an ML-100K graph step on 2 busy cores: 3.5 s with 2 threads, 0.75 s with 1), and
        # a server step that outlasts a SuperNode's 3 s idle poll costs every node a whole poll
        self.threads = str(max(1, (os.cpu_count() or 1) // self.nodes))
        self.server_env = dict(self.env, OMP_NUM_THREADS=self.threads)
        self._write_files()

    def _write_files(self) -> None:
        write_text(self.app / "pyproject.toml", APP_TOML.format(version=__version__))
        tls = bool(self.external and self.cfg.flower.tls)  # here: 127.0.0.1 only, no TLS
        lines = [
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]',
            f'address = "{self.address}"',
        ]
        lines.append(f"insecure = {'false' if tls else 'true'}")
        if tls and self.cfg.flower.root_certificates:
            lines.append(
                f'root-certificates = "{Path(self.cfg.flower.root_certificates).expanduser().absolute()}"'
            )
        write_text(self.home / "config.toml", "\n".join(lines) + "\n")

    # ---- processes -------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            env=env or self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def _log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_port(self, name: str, proc: subprocess.Popen, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LaunchError(f"{name} exited with code {proc.returncode}:\n{self._log_tail(name)}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise LaunchError(
            f"{name} did not listen on 127.0.0.1:{port} within flower.start_timeout={timeout:g} s"
        )

    def start(self) -> None:
        """The SuperLink, then one SuperNode per shard, all on 127.0.0.1."""
        if self.external:
            return
        timeout = float(self.cfg.flower.start_timeout)
        port = int(self.address.rsplit(":", 1)[1])
        link = self._start(
            "superlink",
            [
                _bin("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            self.server_env,
        )
        self._wait_port("superlink", link, port, timeout)
        out_dir = self.dir / "nodes"
        for k in range(self.nodes):
            node_config = f'shard={k} num-shards={self.nodes} out-dir="{out_dir}"'
            env = dict(self.env, OMP_NUM_THREADS=self.threads)
            self._start(
                f"supernode-{k}",
                [
                    _bin("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.node_ports[k]),
                    "--node-config",
                    node_config,
                ],
                env,
            )

    def run_app(self) -> str:
        """``flwr run`` (streaming the ServerApp's output); returns the run id once it completed."""
        argv = [
            _bin("flwr"),
            "run",
            str(self.app),
            CONNECTION,
            "--stream",
            "--run-config",
            f'run-dir="{self.run_dir}"',
        ]
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        self.procs.append(("flwr-run", proc))
        run_id = None
        with open(self.logs / "flwr-run.log", "a") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                m = re.search(r"Successfully started run (\d+)", line)
                if m:
                    run_id = m.group(1)
                sys.stdout.write(line)
                sys.stdout.flush()
        proc.wait()
        if run_id is None:
            raise LaunchError(
                f"flwr run did not start a run (exit code {proc.returncode}); see {self.logs / 'flwr-run.log'}"
            )
        status = self.status(run_id)
        # `flwr run --stream` exits 0 even when the ServerApp crashed: the run's status says
        if status.get("status") != "finished:completed":
            raise LaunchError(
                f"the ServerApp did not complete: status {status.get('status')!r}: {status.get('status-details')}"
                f"\n(logs: {self.logs})"
            )
        return run_id

    def status(self, run_id: str) -> dict[str, Any]:
        out = subprocess.run(
            [_bin("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.dir,
        )
        try:
            runs = json.loads(out.stdout).get("runs", [])
        except json.JSONDecodeError as err:
            raise LaunchError(f"flwr ls gave no JSON: {out.stdout[-500:]} {out.stderr[-500:]}") from err
        return runs[0] if runs else {}

    def stop(self) -> None:
        """SIGTERM to every process group started here, SIGKILL to what is left after 10 s, then
        a sweep for any process that still has this run's FLWR_HOME. A second Ctrl-C (or kill)
        meanwhile is ignored: the stop always finishes."""
        held = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                held[sig] = signal.signal(sig, signal.SIG_IGN)
            except ValueError:  # not the main thread: signals stay as they are
                break
        try:
            self._stop()
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)

    def _stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for _ in range(50):
            left = processes_with_home(self.home)
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        log.warning("processes still running after stop: %s", processes_with_home(self.home))

    def __enter__(self) -> FlowerLaunch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# (server state, nodes' rows, joined checkpoint): the last round's, and the selected round's
# (written where the run selects on validation; its client generators are the last round's)
JOINS = (("server.ckpt", "clients", "last.ckpt"), ("server-best.ckpt", "clients-best", "best.ckpt"))


def join_checkpoints(run_dir: Path, cfg: DictConfig) -> list[Path]:
    """Every checkpoint of `JOINS` whose server state the run wrote."""
    return [
        join_checkpoint(run_dir, cfg, server, rows, out)
        for server, rows, out in JOINS
        if (run_dir / "checkpoints" / server).exists()
    ]


def join_checkpoint(
    run_dir: Path, cfg: DictConfig, server_file: str = "server.ckpt", rows: str = "clients", out: str = "last.ckpt"
) -> Path:
    """``checkpoints/<out>`` in the format ``python -m fedshare.train`` writes, from the
    server's state and the nodes' client rows (written on their own disks, here all in
    ``flower/nodes/``). Loadable with ``FedShareModule.load_from_checkpoint``."""
    # the model's module (Lightning, DGL): the launcher loads it only to join, after the run
    import pytorch_lightning as pl

    from fedshare.run.build import new_model

    server = torch.load(run_dir / "checkpoints" / server_file, weights_only=False)
    hp = dict(server["hyper_parameters"])
    state = {f"server.{k}": v for k, v in server["server"].items()}
    module = new_model(cfg, hp["n_users"], hp["n_items"])
    user_emb = module.clients.user_emb.clone()
    client_gens = {}
    for k in range(int(cfg.fed.nodes)):
        path = run_dir / "flower" / "nodes" / f"{rows}-{k}.safetensors"
        if not path.exists():
            raise LaunchError(f"{path} is missing: node {k} did not finish (its rows stay unknown)")
        t = load_file(str(path))
        user_emb[t["users"].long()] = t["user_emb"]
        client_gens[round_purpose(k)] = t["round_gen"]
    state["clients.user_emb"] = user_emb
    module.load_state_dict(state, strict=True)
    ckpt = {
        "epoch": int(server["round"]) - 1,
        "global_step": int(server["round"]),
        "pytorch-lightning_version": pl.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": hp,
        "optimizer_states": [server["optimizer"]],
        "lr_schedulers": [],
        "generators": {"server": server["generators"], "clients": client_gens},
        "server_graph": server["server_graph"],
        "history": server["history"],
        "flower": True,
    }
    path = run_dir / "checkpoints" / out
    replace_file(path, lambda tmp: torch.save(ckpt, tmp))
    return path


def log_to_wandb(cfg: DictConfig, run_dir: Path, metrics: dict[str, float]) -> None:
    """The finished run into W&B (``logger``; offline by default, files in the run folder), as
    ``python -m fedshare.train`` logs it: every validation, the summary, the unlearning table."""
    logger = build_logger(cfg, run_dir)
    if logger is None:
        return
    import wandb  # W&B only when the run logs to it

    try:
        run = logger.experiment
        for entry in driver.read_history(run_dir):
            run.log({k: v for k, v in entry.items() if k != "round"}, step=int(entry["round"]))
        driver.log_results(run, cfg, {**metrics, "flower/nodes": int(cfg.fed.nodes)})
    finally:
        wandb.finish()


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """Relative ``data.root``, ``data.path`` and ``unlearn.requests.file`` made absolute (from where
    the launcher was started): the ServerApp and the nodes run in other folders."""
    changes = {}
    for key in ("data.root", "data.path", "unlearn.requests.file"):
        value = OmegaConf.select(cfg, key)
        if value and not Path(str(value)).expanduser().is_absolute():
            changes[key] = str(Path(str(value)).expanduser().absolute())
    if not changes:
        return cfg
    out = OmegaConf.to_container(cfg)
    for key, value in changes.items():
        parent = out
        *path, leaf = key.split(".")
        for part in path:
            parent = parent[part]
        parent[leaf] = value
    out = OmegaConf.create(out)
    OmegaConf.set_readonly(out, True)
    return out


def compose_args(argv: list[str]) -> list[str]:
    """``nodes=N`` -> ``fed.nodes=N``; the experiment defaults to ``fedshare`` (learning)."""
    args = [f"fed.nodes={a.split('=', 1)[1]}" if a.startswith("nodes=") else a for a in argv]
    if not any(a.startswith("experiment=") for a in args):
        args = ["experiment=fedshare", *args]
    return args


def launch(cfg: DictConfig, command: str | None = None) -> dict[str, float]:

    if cfg.model.name != "fedshare":
        raise LaunchError(f"python -m fedshare.flower runs model=fedshare; got model={cfg.model.name}")
    if cfg.resume:
        raise LaunchError("resume=true is not supported on Flower yet: start a new run")
    flower_methods = names(on_flower=True)  # the registry's methods that need no client rounds
    other = [m for m in cfg.unlearn.methods or [] if m not in flower_methods]
    if other:
        raise LaunchError(
            f"unlearn.methods={list(cfg.unlearn.methods)}: on Flower the server runs {', '.join(flower_methods)} "
            "(the others retrain or replay clients). retrain and finetune: learn on Flower without them, then "
            "run them in-process on the joined checkpoint (python -m fedshare.unlearn run_dir=RUN "
            "'methods=[retrain]'); fedEraser and fru replay histories only an in-process run records"
        )
    run_dir = run_dir_for(cfg)
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists():
        raise RunFolderError(f"{run_dir} already holds a run; pick another paths.output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = absolute_paths(cfg)
    driver.write_config(cfg, run_dir, command)
    t0 = time.perf_counter()
    with FlowerLaunch(cfg, run_dir) as fl:
        fl.start()
        fl.run_app()
    seconds = time.perf_counter() - t0
    metrics = driver.read_metrics(run_dir)
    lost = sorted(k.rsplit("/", 1)[1] for k in metrics if k.startswith("flower/lost_shard/"))
    if lost:
        log.warning(
            "shard(s) %s were lost: their clients' rows are unknown, so there is no checkpoints/last.ckpt; "
            "the server's state is in checkpoints/server.ckpt",
            ", ".join(lost),
        )
    elif not cfg.flower.superlink:  # the nodes' rows are on this machine
        join_checkpoints(run_dir, cfg)
    log_to_wandb(cfg, run_dir, metrics)
    title = f"fedshare on {cfg.data.name}, Flower, {int(cfg.fed.nodes)} SuperNodes, {seconds:.1f} s"
    driver.report(cfg, metrics, run_dir, title=title)
    return metrics


def main(argv: list[str] | None = None) -> int:

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    try:
        cfg = compose(compose_args(args))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    def stopped(signum: int, frame: Any) -> None:  # kill / a closed terminal: stop as Ctrl-C does
        raise Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stopped)
    # Ctrl-C stops the run even when this process inherited SIGINT ignored (a job started with
    # `&` from a script, nohup): Python leaves an ignored SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launch(cfg, shlex.join(["python", "-m", "fedshare.flower", *args]))
    except (LaunchError, RunFolderError, DatasetError) as err:
        print(f"flower error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every Flower process was stopped", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}: every Flower process was stopped", file=sys.stderr)
        return 128 + stop.signum
    return 0
