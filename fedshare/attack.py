"""Attacks on what a party receives: ``python -m fedshare.attack device [GROUP=NAME ...] [key=value ...]``.

``device``: a FedShare run (the config's keys, ``experiment=fedshare`` by default) with a curious
device: from exactly what its first sharing device receives over the run, it ranks every other
sharing user's items and reports precision@20 against the density of a random guess
(`fedshare.attacks.curious_device`), and the same with what the alignment's negatives were
before issue 14 (the ids and views of ``model.cl_negatives`` other sharing users each round,
drawn on the same run, never sent), the leak that design had. The run is a normal run folder
(``paths.output_dir``). The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys

from fedshare.config import compose
from fedshare.train import exit_code, quiet_library_noise

ATTACKS = ("device",)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_library_noise()
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ATTACKS:
        print(f"usage: python -m fedshare.attack {{{','.join(ATTACKS)}}} [key=value ...]\n{__doc__}")
        return 2
    overrides = args[1:]
    if not any(a.startswith("experiment=") for a in overrides):
        overrides = ["experiment=fedshare", *overrides]
    results: list[dict] = []

    def attack() -> None:
        from fedshare.attacks.curious_device import run  # torch and the run driver, only for a run

        results.append(run(compose(overrides)))

    code = exit_code(attack)
    if code:
        return code
    result = results[0]
    for what, name in (("private", "what it receives"), ("breach", "with the pre-issue-14 negatives")):
        r = result[what]
        print(
            f"curious device {result['device']}, {name} ({result['rounds_received']} rounds, "
            f"{r['ids_received']} other users' ids): precision@20 {r['precision@20']:.4f} over "
            f"{r['users_attacked']} users, random guess {r['density']:.4f}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
