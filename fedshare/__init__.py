"""FedShare: federated recommendation with personalized data sharing and unlearning.

Where things live (a folder per concept; each package's ``__init__`` says what it holds)::

    data/         interactions (CSR tables), readers (file formats), datasets (configs, files,
                  splits, the synthetic generator), sharing (each user's local and shared part)
    graph/        the server's shared graph (shared_graph: DGL, edited in place, edge log),
                  dgl_compat (the one place that imports DGL), lightgcn (propagation, BPR)
    federated/    rounds (cohorts, vectorized client rounds, FedAvg), fedmf (FedMF clients and
                  server), fedshare (FedShare's clients and graph server), losses
    eval/         ranking (full-ranking math), metrics (the torchmetrics Metric)
    unlearning/   requests (unsharing requests, the ledger), snapshots (the snapshot store),
                  registry (the one list of methods), one module per method (contrastive,
                  retrain, fedEraser = fed_eraser, fru, finetune, delete_only), history (what
                  the baselines record), context (a method's inputs, the recorder hooks),
                  judge (utility, forgetting, membership inference), phase (requests ->
                  deletion -> methods -> judging -> scrub)
    run/          the run driver (driver: what in-process and Flower runs share), inprocess
                  (train(cfg)), build (a model from its config), folder (run folder, resume),
                  checkpoints, logger (W&B), faults, runtime
    reporting/    tables (the end-of-run printout), unlearning_page (table, plots, checks,
                  docs/UNLEARNING.md), results_page (docs/RESULTS.md), records (run records
                  a page names must be tracked)
    tuning/       search (python -m fedshare.tune: Optuna on validation, pruning, best.yaml),
                  campaign (the results campaign's equal-budget searches, FedShare's staged)
    flower/       the same rounds on Flower: strategy, node, payload, apps, launch
    benchmarks/   suite: the benchmarks of python -m fedshare.bench (rounds, evaluation,
                  propagation, Flower)
    attacks/      curious parties on what they really receive (python -m fedshare.attack):
                  curious_device (a device ranking other users' shared items)
    config.py     composing and validating configs/ (every default lives in the YAML)
    atomic.py     the one durable writer (every file a run writes goes through it)
    seeding.py    one seeded generator per purpose

Entry points, each a thin ``main()`` over the packages: ``python -m fedshare.train``,
``.unlearn``, ``.bench``, ``.tune``, ``.results``, ``.report``, ``.attack``, ``.flower``. LightningModules (one epoch =
one round) are in ``lightning_modules/``, the LightningDataModule in ``datamodules/``; only the
run driver (``run/``) imports them.
"""

__version__ = "0.1.0"
