"""Which linkage makes a dendrogram one can walk (paper §6.1.4)? A measurement, not a taste.

The §6.1.4 bottom-up walk selects a small cluster around a neuron (3 neurons), then climbs two levels to
a bigger one (36 neurons). That needs nested clusters of readable sizes along each neuron's path. For a
sample of pairs and neurons of an experiment this reports, per linkage method (on the paper's L2 RF
distance, ``core.clustering``):

- ``ancestor_sizes``: the sizes of each neuron's 1st, 2nd and 3rd ancestor (median and quartiles over
  every sampled (pair, neuron)); a chain shows up as a 3rd ancestor holding most of the neurons;
- ``singleton_merge_share``: the share of merges where one side is a single neuron (1 for a chain);
- ``third_over_half``: the share of sampled neurons whose 3rd ancestor holds more than half the neurons.

Pairs are drawn without replacement by a seeded generator; in each, ``neurons`` neurons among those with
an RF (see ``report``).

Run: ``python -m core.linkage_report --cache cache --experiment demo [--pairs 20 --neurons 64]``. The
RF thresholds are computed into a scratch folder, never into the store.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from core import clustering

METHODS = ("average", "complete", "ward")
LEVELS = 3


def summarize(sizes: np.ndarray, shares: list[float], n: int) -> dict:
    """Quartiles (25/50/75 %) of each ancestor level's size, the mean singleton-merge share over the
    pairs and the share of neurons whose 3rd ancestor holds more than n/2 neurons."""
    q = np.percentile(sizes, [25, 50, 75], axis=0)  # (3, levels)
    return {"ancestor_quartiles": [[float(v) for v in q[:, k]] for k in range(sizes.shape[1])],
            "singleton_merge_share": float(np.mean(shares)),
            "third_over_half": float(np.mean(sizes[:, -1] > n / 2))}


def report(analysis, *, pairs: int = 20, neurons: int = 64, methods=METHODS, seed: int = 0,
           live_only: bool = True) -> dict:
    """{method: summary} (``summarize``) on the L2 RF distance of ``analysis``'s store (one distance
    matrix per sampled pair, shared by every method). ``live_only``: sample only neurons with an RF on
    the benign or the adversarial image (a walk starts from a neuron that sees something; the dead
    ones all sit in the height-0 cluster, whatever the linkage)."""
    n = analysis.num_neurons
    rng = np.random.default_rng(seed)
    pair_ids = np.sort(rng.choice(analysis.num_pairs, min(pairs, analysis.num_pairs), replace=False))
    sizes = {m: [] for m in methods}
    shares = {m: [] for m in methods}
    sampled = 0
    for p in pair_ids:
        mb, ma = (analysis.rf_masks(int(p), s) for s in ("benign", "adversarial"))
        live = np.flatnonzero((mb.flatten(1).any(1) | ma.flatten(1).any(1)).numpy())
        js = np.sort(rng.choice(live, min(neurons, len(live)), replace=False)) if live_only else \
            np.sort(rng.choice(n, min(neurons, n), replace=False))
        sampled += len(js)
        xb, xa = analysis.store.pair_images(int(p))
        dist = clustering.distance_matrix("l2", benign_image=xb, adversarial_image=xa,
                                          benign_masks=mb, adversarial_masks=ma)
        for m in methods:
            Z = clustering.linkage(dist, m, kind="l2")
            sizes[m].append(clustering.ancestor_sizes(Z, js, LEVELS))
            shares[m].append(clustering.singleton_merge_share(Z))
    out = {m: summarize(np.concatenate(sizes[m]), shares[m], n) for m in methods}
    return {"experiment": analysis.store.id, "neurons": n, "pairs": len(pair_ids),
            "sampled_neurons": sampled, "methods": out}


def markdown(reports: list[dict]) -> str:
    """One Markdown table row per (experiment, method): quartiles as "median (q1–q3)"."""
    lines = ["| experiment (n neurons, pairs, sampled neurons) | linkage | 1st ancestor | 2nd ancestor | "
             "3rd ancestor | singleton merges | 3rd ancestor > n/2 |", "|---|---|---|---|---|---|---|"]
    for r in reports:
        for m, s in r["methods"].items():
            cells = [f"{q[1]:g} ({q[0]:g}–{q[2]:g})" for q in s["ancestor_quartiles"]]
            lines.append(f"| {r['experiment']} ({r['neurons']}, {r['pairs']}, {r['sampled_neurons']}) | "
                         f"{m} | {' | '.join(cells)} | "
                         f"{s['singleton_merge_share']:.0%} | {s['third_over_half']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from core.analysis import Analysis
    from core.store import open_store
    ap = argparse.ArgumentParser(prog="python -m core.linkage_report", description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="cache")
    ap.add_argument("--experiment", action="append", required=True, help="repeat for several")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--neurons", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = ap.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory() as scratch:
        for exp in args.experiment:
            an = Analysis(open_store(exp, args.cache))
            an.derived = Path(scratch) / exp  # thresholds go to scratch: the store is only read
            reports.append(report(an, pairs=args.pairs, neurons=args.neurons))
    print(json.dumps(reports, indent=1) if args.json else markdown(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
