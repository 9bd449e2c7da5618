"""The ``simdl`` command line: ``simdl run [CONFIG.toml] [--set key=value ...] [--out DIR]``."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from simdl.config import RUN_KEYS, TRAIN_KEYS, apply_override, expand_runs, load_config

EPILOG_RUN = """\
config layout (TOML; every key can be overridden with --set section.key=value):
  [task]          dataset ("digits" | mnist | fashion_mnist | cifar10 | cifar100 | emnist), model (mlp | cnn | ...),
                  n_workers, partition (iid | dirichlet | shards), alpha (Dirichlet α > 0),
                  classes_per_worker (shards), seed  -- or kind = "random_quadratics" with dim, mu, L, zeta2, r0, noise
  [train]         steps, batch_size (per worker), eval_every, seed, mixing (auto | dense | sparse | shift | mean)
  [run_defaults]  keys applied to every run
  [[runs]]        one table per run: algorithm, topology (ring | chain | torus | complete | star | hypercube |
                  exponential | one_peer_exponential | erdos_renyi | social_network | binary_tree |
                  double_binary_trees), topology_args (table), name, and the algorithm's hyperparameters
                  (learning_rate, momentum, nesterov, weight_decay, local_steps, ...)
examples:
  simdl run                                   # the default experiment on the embedded digits dataset
  simdl run --set task.alpha=1.0 --set train.steps=500 --out runs/alpha1
  simdl run my.toml --set runs.0.learning_rate=0.05
outputs: DIR/results.json (config, histories, final metrics, versions, device), DIR/summary.csv, DIR/*.png
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simdl",
        description="Simulate decentralized deep learning on one machine: n workers vectorized with jax.vmap.",
        epilog="Run 'simdl run --help' for the config format and examples; 'simdl list' for valid names.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run an experiment (default: digits, 16 workers, several algorithms)",
                       description="Run every [[runs]] entry of CONFIG on one task and write results, a summary "
                                   "table and plots.",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", default=None,
                   help="TOML config file (default: the built-in experiment, simdl/configs/default.toml)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted (task.alpha=0.5, train.steps=200, runs.1.learning_rate=0.05); "
                        "values are TOML (numbers, true/false, \"strings\"); repeatable")
    r.add_argument("--out", default="runs/latest", metavar="DIR",
                   help="output folder for results.json, summary.csv and plots (default: runs/latest)")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("list", help="list valid algorithm, topology, dataset, model and partition names")
    return p


def _task_from_config(cfg: dict):
    import simdl

    t = dict(cfg.get("task", {}))
    kind = t.pop("kind", "classification")
    if kind == "classification":
        return simdl.tasks.classification(**t)
    if kind == "random_quadratics":
        return simdl.tasks.random_quadratics(**t)
    raise ValueError(f"unknown task kind {kind!r}; valid: classification, random_quadratics")


def _build_run(run: dict, task, train: dict):
    import simdl

    topo = simdl.topologies.get(run.get("topology", "ring"), task.n_workers, **run.get("topology_args", {}))
    kwargs = {k: v for k, v in run.items() if k not in RUN_KEYS}
    if run["algorithm"] == "model_averaging_clr" and "steps_per_epoch" not in kwargs:
        kwargs["steps_per_epoch"] = max(1, math.ceil(task.shard_size / train["batch_size"]))
    alg = simdl.algorithms.get(run["algorithm"], **kwargs)
    return topo, alg


def _print_table(rows: list[dict], file=None) -> None:
    file = file or sys.stdout
    cols = [("run", "name", "{}"), ("status", "status", "{}"), ("acc(x̄)", "avg_model_accuracy", "{:.4f}"),
            ("acc mean", "worker_accuracy_mean", "{:.4f}"), ("acc min", "worker_accuracy_min", "{:.4f}"),
            ("f(x̄)", "avg_model_loss", "{:.4g}"), ("f−f*", "suboptimality", "{:.3g}"),
            ("Ξ²", "consensus_distance", "{:.3g}"), ("MB/worker", "bytes_per_worker", "{:.2f}"),
            ("time s", "wall_time_s", "{:.1f}")]
    cols = [c for c in cols if any(r.get(c[1]) is not None for r in rows)]
    cells = []
    for r in rows:
        line = []
        for _, key, fmt in cols:
            v = r.get(key)
            if key == "bytes_per_worker" and v is not None:
                v = v / 1e6
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (h, _, _), w in zip(cols, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)), file=file)


def cmd_list() -> int:
    import simdl
    from simdl.data import DATASETS
    from simdl.models import MODELS
    from simdl.tasks.classification import PARTITIONS

    print("algorithms: ", ", ".join(sorted(simdl.algorithms.ALGORITHMS)))
    print("topologies: ", ", ".join(sorted(simdl.topologies.TOPOLOGIES)))
    print("datasets:   ", ", ".join(DATASETS))
    print("models:     ", ", ".join(sorted(MODELS)))
    print("partitions: ", ", ".join(PARTITIONS))
    return 0


def cmd_run(args) -> int:
    cfg = load_config(args.config)
    for item in args.overrides:
        cfg = apply_override(cfg, item)
    train = {"steps": 1000, "batch_size": 32, "eval_every": None, "seed": 0, "mixing": "auto"}
    unknown = sorted(set(cfg.get("train", {})) - set(TRAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown [train] key(s) {unknown}; valid: {', '.join(TRAIN_KEYS)}")
    train.update(cfg.get("train", {}))
    runs = expand_runs(cfg)

    import jax

    import simdl
    from simdl.plots import plot_runs
    from simdl.results import summary_rows, write_outputs
    from simdl.simulate import validate

    # Everything that can be checked is checked before the first compilation.
    task = _task_from_config(cfg)
    built = []
    for run in runs:
        topo, alg = _build_run(run, task, train)
        eval_every = train["eval_every"] or max(1, train["steps"] // 20)
        validate(task, alg, topo, train["steps"], train["batch_size"], eval_every)
        simdl.mixing.choose_method(topo, train["mixing"])
        built.append((run, topo, alg))

    out = Path(args.out)
    dev = jax.devices()[0]
    payload = {"simdl_version": simdl.__version__, "jax_version": jax.__version__,
               "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg, "task": task.info, "runs": []}
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=train["steps"] * len(built), unit="step", desc="simdl", dynamic_ncols=True)
    try:
        for run, topo, alg in built:
            if bar is not None:
                bar.set_description(run["name"])
            last = [0]

            def progress(step, row, last=last):
                if bar is not None:
                    bar.update(step - last[0])
                    last[0] = step

            t0 = time.perf_counter()
            res = simdl.simulate(task, alg, topo, steps=train["steps"], batch_size=train["batch_size"],
                                 seed=train["seed"], eval_every=train["eval_every"], mixing=train["mixing"],
                                 callback=progress)
            if bar is not None:
                bar.update(train["steps"] - last[0])
            status = "ok" if res.diverged_at is None else "diverged"
            if res.diverged_at is not None:
                msg = f"run {run['name']}: loss became NaN/Inf at step {res.diverged_at}; history kept up to there"
                (bar.write if bar is not None else print)(msg)
            payload["runs"].append({
                "name": run["name"], "algorithm": alg.name, "topology": topo.name, "status": status,
                "diverged_at": res.diverged_at, "config": run, "hyperparams": alg.hyperparams,
                "topology_info": topo.describe(), "mixing": res.info["mixing"], "compiles": res.info["compiles"],
                "wall_time_s": time.perf_counter() - t0, "compile_time_s": res.info["compile_time_s"],
                "history": {k: v.tolist() for k, v in res.history.items()}, "final": res.final})
            write_outputs(out, payload)  # after every run: finished runs stay written
    finally:
        if bar is not None:
            bar.close()
    if not args.no_plots:
        plot_runs(payload["runs"], out)
    print()
    _print_table(summary_rows(payload["runs"]))
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.csv'}" + ("" if args.no_plots else " and plots"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "list":
            return cmd_list()
        return cmd_run(args)
    except ValueError as e:
        print(f"simdl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
