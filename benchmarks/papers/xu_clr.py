"""Paper check: model averaging with a cyclical learning rate and more local epochs (Xu, Mi, Feng et al.
2018, "Collaborative Deep Learning Across Multiple Data Centers", arXiv 1810.06877;
docs/algorithms.md#model_averaging_clr).

K workers ("data centers") each hold a shard of the embedded digits data and train an MLP. Every round each worker
trains E local epochs from the global model, then the models are averaged (weighted by shard size). Compared, at
the same number of epochs (same gradient computations):

* centralised training: ``allreduce`` (exact average every step) with the constant learning rate η_1;
* model averaging with a constant learning rate η_1 (``cycle="constant"``), E ∈ {1, 5};
* model averaging with a cyclical learning rate, one cycle per round, low point η_2 at the averaging step
  (``cycle="sawtooth"``, the SWA-style default; full mode adds ``"triangular"``), E ∈ {1, 5}.

Claim to check qualitatively: with a cyclical learning rate and more local epochs, model averaging reaches the
accuracy of centralised training (or better) with far fewer communication rounds, and the cyclical learning rate
beats the constant one at the same E.

Usage: ``python benchmarks/papers/xu_clr.py [--quick] [--partition iid|dirichlet] [--out DIR]``. Prints a markdown
table and writes ``xu_clr.png`` (test accuracy of the averaged model vs step and vs communication round).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time

import jax
import numpy as np

import simdl
from simdl.algorithms.averaging import allreduce, model_averaging_clr


def run_one(task, topo, label, alg, steps, batch, eval_every, seed, steps_per_round):
    t0 = time.time()
    res = simdl.simulate(task, alg, topo, steps=steps, batch_size=batch, eval_every=eval_every, seed=seed)
    h = res.history
    return {"label": label, "step": h["step"], "round": h["step"] / steps_per_round,
            "acc": h["avg_model_accuracy"], "loss": h["avg_model_loss"], "bytes": h["bytes_per_worker"],
            "rounds": steps // steps_per_round, "wall": time.time() - t0, "diverged": res.diverged_at}


def first_reaching(x, y, level):
    idx = np.nonzero(np.asarray(y) >= level)[0]
    return float(x[idx[0]]) if len(idx) else math.nan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and epochs (about a minute)")
    ap.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α for --partition dirichlet")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.1, help="η_1 (constant LR and cycle peak)")
    ap.add_argument("--min-lr", type=float, default=0.001, help="η_2 (cycle low point)")
    ap.add_argument("--peaks", default="1,3",
                    help="full mode: learning rates (constant runs) and cycle peaks (cyclical runs) as multiples of "
                         "--lr, so that a cyclical LR is compared with a constant LR of the same peak")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "figures"))
    args = ap.parse_args(argv)
    t0 = time.time()
    n = args.workers
    epochs = args.epochs or (10 if args.quick else 30)
    task = simdl.tasks.classification("digits", "mlp", n_workers=n, partition=args.partition, alpha=args.alpha,
                                      seed=args.seed)
    topo = simdl.topologies.complete(n)
    spe = math.ceil(task.shard_size / args.batch)  # local steps per epoch
    steps = epochs * spe
    common = dict(steps=steps, batch=args.batch, eval_every=spe, seed=args.seed)
    cycles = ["constant", "sawtooth"] if args.quick else ["constant", "sawtooth", "triangular"]
    peaks = [1.0] if args.quick else [float(p) for p in args.peaks.split(",")]
    configs = [(f"centralised (allreduce), constant {k * args.lr:g}", allreduce(k * args.lr), 1, (0, "constant", j))
               for j, k in enumerate(peaks)]
    for e in (1, 5):
        for cycle in cycles:
            for j, k in enumerate(peaks):
                peak = k * args.lr
                alg = model_averaging_clr(peak, args.min_lr, local_epochs=e, steps_per_epoch=spe, cycle=cycle)
                lr_text = f"constant {peak:g}" if cycle == "constant" else f"{cycle} {peak:g}→{args.min_lr:g}"
                configs.append((f"model averaging E={e}, {lr_text}", alg, e * spe, (e, cycle, j)))
    runs = []
    for label, alg, spr, style in configs:
        runs.append(run_one(task, topo, label, alg, steps_per_round=spr, **common) | {"style": style})

    ref = max(r["acc"][-1] for r in runs if "allreduce" in r["label"])
    level = 0.98 * ref
    print(f"# Model averaging with cyclical LR paper check ({datetime.date.today()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__})")
    print(f"digits/mlp, K = {n} workers, partition {args.partition}"
          + (f" (α = {args.alpha})" if args.partition == "dirichlet" else "")
          + f", batch {args.batch}, {spe} steps per epoch, {epochs} epochs = {steps} steps, η_1 = {args.lr}, "
          f"η_2 = {args.min_lr}, seed {args.seed}\n")
    print(f"| run | rounds (averagings) | MB sent per worker | final test acc (x̄) | best test acc | final train loss "
          f"(x̄) | round reaching {level:.3f} (98% of the best centralised) |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        reach = first_reaching(r["round"], r["acc"], level)
        print(f"| {r['label']} | {r['rounds']} | {r['bytes'][-1] / 1e6:.2f} | {r['acc'][-1]:.3f} | "
              f"{np.max(r['acc']):.3f} | {r['loss'][-1]:.4f} | {reach:g} |")
    print()

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(13, 5))
    cmaps = {0: plt.cm.Greys, 1: plt.cm.Blues, 5: plt.cm.Reds}
    dashes = {"constant": "--", "sawtooth": "-", "triangular": ":"}
    for r in runs:
        e, cycle, j = r["style"]
        color = cmaps[e](0.55 + 0.4 * j / max(len(peaks) - 1, 1))
        kw = dict(color=color, ls=dashes[cycle], lw=2.2 if e == 0 else 1.4)
        ax[0].plot(r["step"], r["acc"], label=r["label"], **kw)
        at_round = np.isclose(r["round"], np.round(r["round"]))  # models are equal right after an averaging
        ax[1].plot(r["round"][at_round], r["acc"][at_round], marker=".", ms=4, **kw)
    ax[0].set_xlabel("step (local SGD steps per worker)")
    ax[0].set_ylabel("test accuracy of the averaged model")
    ax[0].set_ylim(max(0.0, min(np.min(r["acc"]) for r in runs) - 0.02), 1.0)
    ax[0].legend(fontsize=7, ncol=2, loc="lower right")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("communication rounds (averagings; allreduce: every step)")
    ax[1].set_ylabel("test accuracy after each averaging")
    ax[1].set_ylim(*ax[0].get_ylim())
    ax[1].set_title("grey: centralised, blue: E=1, red: E=5; dashed constant, solid sawtooth, dotted triangular; "
                    "darker = larger peak", fontsize=7)
    fig.suptitle(f"Model averaging with cyclical LR: digits/mlp, K={n}, {args.partition}, {epochs} epochs",
                 fontsize=10)
    fig.tight_layout()
    suffix = "" if args.partition == "iid" else f"_{args.partition}"
    path = os.path.join(args.out, f"xu_clr{suffix}.png")
    fig.savefig(path, dpi=120)
    print(f"figure: {path}; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
