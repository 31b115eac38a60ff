from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedshare.config import ConfigError, available, compose, config_dir, save


def test_defaults_compose_to_the_fedshare_unlearning_synthetic_job() -> None:
    cfg = compose()
    assert cfg.choices.data == "synthetic"
    assert cfg.model.name == "fedshare" and cfg.choices.experiment == "fedshare_unlearn"
    assert list(cfg.unlearn.methods) == ["contrastive", "retrain"]
    assert list(compose(["experiment=fedshare"]).unlearn.methods) == []
    assert compose(["experiment=fedmf"]).model.name == "fedmf"
    assert cfg.sharing.policy == "segments"
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert list(cfg.eval.ks) == [10, 20]
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.seed = 3  # read-only: config never changes during a run


def test_group_choice_and_dotted_overrides() -> None:
    cfg = compose(["data=ml-100k", "sharing=fixed", "sharing.ratio=0.25", "fed.rounds=7", "eval.ks=[5,50]", "eval.monitor=val/ndcg@50"])
    assert cfg.data.name == "ml-100k" and cfg.data.format == "ml100k"
    assert cfg.sharing.policy == "fixed" and cfg.sharing.ratio == 0.25
    assert cfg.fed.rounds == 7
    assert list(cfg.eval.ks) == [5, 50]


def test_experiment_overlay_and_cli_group_wins() -> None:
    cfg = compose(["experiment=popularity"])
    assert cfg.model.name == "popularity" and cfg.fed.rounds == 1
    cfg = compose(["experiment=popularity", "fed.rounds=4"])
    assert cfg.fed.rounds == 4
    cfg = compose(["experiment=popularity", "model=fedmf"])
    assert cfg.model.name == "fedmf"
    assert compose(["experiment=fedmf"]).model.name == "fedmf"


def test_debug_fdr_is_cpu_fast_dev_run_without_logger() -> None:
    cfg = compose(["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.logger.name == "none"


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        (["fed.roundz=3"], ["fed.roundz", "rounds", "cohort_fraction"]),
        (["model=nope"], ["model 'nope'", "fedmf", "popularity"]),
        (["experiment=nope"], ["experiment 'nope'", "fedmf"]),
        (["sharing.policy=sometimes"], ["sharing.policy", "segments", "beta"]),
        (["fed.rounds=ten"], ["fed.rounds", "integer"]),
        (["eval.ks=10"], ["eval.ks", "list"]),
        (["eval.ks=[5,50]"], ["eval.monitor=val/recall@20", "val/recall@50", "val/ndcg@5"]),
        (["eval.monitor=test/recall@20"], ["eval.monitor", "val/recall@20"]),
        (["eval.patience=0"], ["eval.patience", ">= 1"]),
        (["logger=none", "logger.mode=online"], ["logger.mode", "name"]),
        (["sharing=fixed", "sharing.a=2"], ["sharing.a", "ratio"]),
        (["rounds"], ["key=value"]),
        (["fed.cohort_fraction=0"], ["fed.cohort_fraction"]),
        (["model.negatives=users"], ["model.negatives", "unknown key"]),
        (["model.negatives_group=1"], ["model.negatives_group", ">= 2"]),
        (["data.kcore=-1"], ["data.kcore"]),
        (["data=ml-100k", "data.split.ratios=[0.5,0.1,0.1]"], ["ratios"]),
        (["sharing.none=0.7", "sharing.full=0.6"], ["sharing.none", "sharing.full"]),
    ],
)
def test_bad_input_names_what_and_lists_what_is_accepted(override: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        compose(override)
    for needle in needles:
        assert needle in str(err.value)


def test_bad_key_in_an_overlay_file_names_the_file(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "experiment" / "broken.yaml").write_text("fed:\n  roundz: 3\n")
    with pytest.raises(ConfigError) as err:
        compose(["experiment=broken"], root=root)
    assert "broken.yaml" in str(err.value) and "fed.roundz" in str(err.value)


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    cfg = compose(["data=lastfm", "fed.rounds=3"])
    save(cfg, tmp_path / "config.yaml")
    again = OmegaConf.load(tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_every_group_file_composes_and_comments_its_keys() -> None:
    for group in ("data", "model", "sharing", "trainer", "logger", "experiment", "debug"):
        for name in available(group):
            # a model without a server graph cannot run the default job's unlearning phase
            learning_only = ["unlearn.methods=[]"] if group == "model" and name != "fedshare" else []
            compose([f"{group}={name}", *learning_only])
            for line in (config_dir() / group / f"{name}.yaml").read_text().splitlines():
                stripped = line.strip()
                if group in ("data", "experiment", "debug") or not stripped or stripped.startswith("#"):
                    continue
                assert "# (" in line, f"{group}/{name}.yaml: key without a '# (type) meaning' comment: {line}"


@pytest.mark.parametrize("name", available("model"))
def test_the_yaml_holds_the_only_copy_of_every_model_default(name: str, tmp_path: Path) -> None:
    """``new_model`` passes every key of the model group (plus seed, eval.ks and, federated,
    fed.cohort_fraction and fed.nodes); the module has no default for any of them and no other
    parameter than its sizes, so a default can never drift from the YAML. The module built from
    the composed config reloads from a checkpoint (Lightning stores every init argument)."""
    import inspect

    import pytorch_lightning as pl
    import torch

    from fedshare.federated.fedmf import FedAvgServer, FedMFClients
    from fedshare.federated.fedshare import FedShareClients, GraphServer, make_clients
    from fedshare.run.build import FEDERATED, model_kwargs, new_model

    cfg = compose([f"model={name}", "experiment=null"])
    kwargs = model_kwargs(cfg)
    passed = set(OmegaConf.to_container(cfg.model)) - {"name"} | {"ks"}
    passed |= set() if name == "popularity" else {"seed"}
    passed |= {"cohort_fraction", "nodes"} if name in FEDERATED else set()
    assert set(kwargs) == passed
    model = new_model(cfg, 7, 9)
    params = inspect.signature(type(model).__init__).parameters
    assert [p for p in params if params[p].default is not inspect.Parameter.empty] == []
    assert set(params) - {"self", "n_users", "n_items"} == passed
    assert {k: model.hparams[k] for k in passed} == kwargs
    # what they build takes the values from the module, never a default of its own
    for built in (FedMFClients, FedAvgServer, FedShareClients, GraphServer, make_clients):
        own = inspect.signature(built).parameters
        assert [p for p in own if own[p].default is not inspect.Parameter.empty] == [], built
    path = tmp_path / "model.ckpt"
    hparams = dict(model.hparams)
    state = {"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": pl.__version__}
    torch.save(state, path)
    loaded = type(model).load_from_checkpoint(path)
    assert dict(loaded.hparams) == hparams
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
