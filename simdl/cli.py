"""The ``simdl`` command line: ``simdl run [CONFIG.toml] [--set key=value ...] [--out DIR]``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from simdl.config import apply_override, expand_runs, load_config

EPILOG_RUN = """\
config layout (TOML; every key can be overridden with --set section.key=value):
  [task]          dataset ("digits" | mnist | fashion_mnist | cifar10 | cifar100 | emnist), model (mlp | cnn | ...),
                  n_workers, partition (iid | dirichlet | shards), alpha (Dirichlet α > 0),
                  classes_per_worker (shards), seed  -- or kind = "random_quadratics" with dim, mu, L, zeta2, r0, noise,
                  convention ("half" | "relaysgd": objective without the 1/2, noise sigma/sqrt(dim) per coordinate)
  [train]         steps (or epochs: steps = epochs * ceil(shard / batch)), batch_size (per worker), eval_every,
                  seed, or seeds (a list: simdl run runs every row over them in one batched program and reports
                  mean +- std; a sweep expands them like a train.seed axis),
                  mixing (auto | dense | sparse | shift | mean),
                  worker_batch (compute gradients k workers at a time to bound memory; see --memory),
                  execution (auto | vmap | map | loop: how per-worker gradients run; auto = measured choice),
                  compute_dtype (float32 | bfloat16: dtype of the per-worker forward/backward passes; params,
                  optimizer state, mixing and metrics stay float32),
                  simulated faults (per-step probabilities, default 0; see simdl.faults): message_drop (each gossip
                  message lost), link_failure (each edge down, both directions), straggler (a worker's gradient
                  is zeroed), message_lost ("renormalize" (default): a receiver averages over the messages it got
                  | "self": the lost weight stays on its own model); gossip faults need an algorithm that mixes
                  via ctx.mix (dsgd, qg_dsgdm, ...)
  [run_defaults]  keys applied to every run
  [[runs]]        one table per run: algorithm, topology (ring | chain | torus | complete | star | hypercube |
                  exponential | one_peer_exponential | base | erdos_renyi | social_network | binary_tree |
                  double_binary_trees), topology_args (table, e.g. base: {k = 2}), name, and the algorithm's
                  hyperparameters (learning_rate, momentum, nesterov, weight_decay, local_steps, ...) and the recipes of
                  simdl.recipes: schedule = {kind = "warmup_multistep", warmup_epochs = 5, milestones = [0.5, 0.75],
                  decay = 0.1} (kinds: constant | warmup_multistep | warmup_cosine), lr_scaling = "linear" | "sqrt"
                  (or {rule = ..., base_batch = 64}), decay_norm = false (no weight decay on norms/biases),
                  local_epochs (local_sgd)
  scale           top-level key: "full" (default) or "tiny" (a 4-step smoke test: --set scale=tiny)
examples:
  simdl run                                   # the default experiment on the embedded digits dataset
  simdl run --set task.alpha=1.0 --set train.steps=500 --out runs/alpha1
  simdl run my.toml --set runs.0.learning_rate=0.05
  simdl run --set train.message_drop=0.2 --tensorboard runs/tb   # lossy gossip, curves in TensorBoard
outputs: DIR/results.json (config, histories, final metrics, versions, device), DIR/summary.csv, DIR/*.png,
  DIR/runs/<id>.json (one per finished run: re-running the same command skips finished runs and keeps them;
  delete DIR/runs to run them again; an unreadable record is named and run again); Ctrl-C or SIGTERM stops
  with finished runs saved (exit 130 / 143); one process at a time per DIR (DIR/.simdl.lock; a second exits 2);
  with --tensorboard TB: TB/<run name>/events.out.tfevents.* (every history metric vs step; needs tensorboardX)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simdl",
        description="Simulate decentralized deep learning on one machine: n workers vectorized with jax.vmap.",
        epilog="Run 'simdl run --help' for the config format and examples; 'simdl list' for valid names.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run an experiment (default: digits, 64 workers, 7 algorithms, 3 seeds)",
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
    r.add_argument("--runs", default=None, metavar="SEL,SEL",
                   help="run only these runs of the config: 0-based indices or run names, comma-separated")
    r.add_argument("--memory", action="store_true",
                   help="print each run's memory estimate (state, data, compiled step) before running it")
    _tensorboard_arg(r)
    sw = sub.add_parser("sweep", help="run a grid of experiments; batched runs share one compiled program",
                        description="Expand the [sweep] grid of CONFIG (product with its [[runs]]), batch runs that "
                                    "differ only in seeds, learning rates or Dirichlet α along a vmapped run axis, run "
                                    "the rest sequentially, and record each finished run atomically so that re-running "
                                    "the same command skips them.",
                        epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _sweep_args(sw, "runs/sweep")
    sw.add_argument("--heatmap", metavar="KEY_X,KEY_Y", default=None,
                    help="two swept keys for heatmap.png (default: the first two keys with several values)")
    sw.add_argument("--dry-run", action="store_true", help="print the runs and compile groups, run nothing")
    tu = sub.add_parser("tune", help="pick the best learning rate per cell on a validation split",
                        description="Sweep learning rates (--lrs) over the cells of CONFIG, evaluating on a held-out "
                                    "validation split of the training set, and report the best learning rate per "
                                    "cell (best_lr.csv).")
    _sweep_args(tu, "runs/tune")
    tu.add_argument("--lrs", default="0.01,0.03,0.1,0.3", metavar="LR,LR,...",
                    help="learning rates to try (default: 0.01,0.03,0.1,0.3)")
    tu.add_argument("--validation", type=float, default=0.1, metavar="FRACTION",
                    help="fraction of the training set held out for validation (default 0.1; classification only)")
    sub.add_parser("list", help="list valid algorithm, topology, dataset, model and partition names")
    rp = sub.add_parser("report", help="regenerate the tables and plots of a finished run or sweep folder",
                        description="Rewrite the tables and plots of DIR from its saved results, computing nothing: "
                                    "a 'simdl run' folder (DIR/results.json: summary.csv, the printed table, the "
                                    "figures) or a 'simdl sweep'/'tune' folder (DIR/runs/*.json: sweep.csv, "
                                    "best_lr.csv, heatmap.png, ...; swept keys are the ones whose value differs "
                                    "between the saved runs).")
    rp.add_argument("dir", metavar="DIR", help="output folder of simdl run / sweep / tune")
    rp.add_argument("--heatmap", metavar="KEY_X,KEY_Y", default=None,
                    help="sweep folder: two swept keys for heatmap.png (default: the first two with several values)")
    rp.add_argument("--no-plots", action="store_true", help="tables only")
    return p


EPILOG_SWEEP = """\
sweep config: a run config (see 'simdl run --help') plus a [sweep] table of lists; dotted keys set config keys,
bare keys set run keys. The grid is the product of the [[runs]] entries and every list:
  [sweep]
  topology = ["ring", "torus"]
  "task.alpha" = [0.1, 1.0, 10.0]
  "train.seed" = [0, 1]
  learning_rate = [0.03, 0.1]
outputs: DIR/runs/<id>.json (one per finished run), DIR/sweep.csv, DIR/metric_vs_alpha.png, DIR/heatmap.png,
DIR/curves/<cell>/*.png (training curves per value of the dotted axes, seeds as bands; up to 12 cells),
DIR/best_lr.csv and DIR/best_lr.png (when learning_rate is swept)
"""


def _tensorboard_arg(p) -> None:
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also write TensorBoard event files, one subfolder per run (needs: pip install tensorboardX)")


def _sweep_args(p, default_out: str) -> None:
    p.add_argument("config", help="TOML sweep config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (as in 'simdl run'); repeatable")
    p.add_argument("--out", default=default_out, metavar="DIR", help=f"output folder (default: {default_out})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _tensorboard_arg(p)


class Terminated(BaseException):
    """Raised by the SIGTERM handler that :func:`main` installs: ``simdl run``/``sweep`` stop as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


def check_out(path: str) -> Path:
    """``--out`` as a Path, checked before anything runs: an existing writable folder, or one that can be created.

    Raises:
      ValueError: ``path`` is a file, lies inside a file, or is (or would be created in) a folder not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out: {path} is a file, expected a writable directory")
    base = p
    while not base.exists():  # the nearest existing ancestor must allow creating the rest
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"--out: {path} lies inside the file {base}, expected a writable directory")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "is not writable" if base == p else f"cannot be created ({base} is not writable)"
        raise ValueError(f"--out: {path} {what}, expected a writable directory")
    return p


def _build_run(run: dict, task, train: dict):
    import simdl
    from simdl.recipes import resolve_run_kwargs

    topo = simdl.topologies.get(run.get("topology", "ring"), task.n_workers, **run.get("topology_args", {}))
    alg = simdl.algorithms.get(run["algorithm"], **resolve_run_kwargs(run, task, train))
    return topo, alg


def _momentum_label(r: dict) -> str | None:
    """``0.9 Nesterov`` / ``0.9 heavy-ball`` / ``0 (SGD)`` from a summary row's ``momentum`` and ``nesterov``."""
    m = r.get("momentum")
    if m is None:
        return None
    if not m:
        return "0 (SGD)"
    return f"{m:g} {'Nesterov' if r.get('nesterov') else 'heavy-ball'}"


def _print_table(rows: list[dict], file=None) -> None:
    """Print summary rows as a table. A metric given as ``<key>_mean`` / ``<key>_std`` (``simdl run`` over seeds)
    prints as ``mean ± std`` (std over seeds, ddof=1; the mean alone for one seed); a plain ``<key>`` as its value."""
    file = file or sys.stdout
    cols = [("run", "name", "{}"), ("status", "status", "{}"), ("momentum", "momentum_label", "{}"),
            ("seeds", "n_seeds", "{}"), ("acc(x̄)", "avg_model_accuracy", "{:.4f}"),
            ("acc mean", "worker_accuracy_mean", "{:.4f}"), ("acc min", "worker_accuracy_min", "{:.4f}"),
            ("f(x̄)", "avg_model_loss", "{:.4g}"), ("f−f*", "suboptimality", "{:.3g}"),
            ("Ξ²", "consensus_distance", "{:.3g}"), ("MB/worker", "bytes_per_worker", "{:.2f}"),
            ("time s", "wall_time_s", "{:.1f}")]
    rows = [{**r, "momentum_label": _momentum_label(r),
             "n_seeds": len(str(r["seeds"]).split()) if r.get("seeds") not in (None, "") else None} for r in rows]

    def value(r, key, fmt):
        if r.get(f"{key}_mean") is not None:
            std = r.get(f"{key}_std")
            return fmt.format(r[f"{key}_mean"]) + ("" if std is None else " ± " + fmt.format(std))
        v = r.get(key)
        if key == "bytes_per_worker" and v is not None:
            v = v / 1e6
        return None if v is None else fmt.format(v)

    cells = [[value(r, key, fmt) for _, key, fmt in cols] for r in rows]
    keep = [i for i in range(len(cols)) if any(c[i] is not None for c in cells)]
    cols = [cols[i] for i in keep]
    cells = [["-" if c[i] is None else c[i] for i in keep] for c in cells]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (h, _, _), w in zip(cols, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)), file=file)


def select_runs(runs: list[dict], selection: str | None) -> list[dict]:
    """The runs picked by ``--runs`` (indices or names, comma-separated); all when ``selection`` is None.

    Raises:
      ValueError: an index out of range or an unknown name (valid names listed).
    """
    if selection is None:
        return runs
    picked = []
    for item in (x.strip() for x in selection.split(",") if x.strip()):
        if item.isdigit():
            if int(item) >= len(runs):
                raise ValueError(f"--runs {item}: index out of range (the config has {len(runs)} runs)")
            picked.append(runs[int(item)])
        else:
            match = [r for r in runs if r["name"] == item]
            if not match:
                raise ValueError(f"--runs {item!r}: no run of that name; valid: {', '.join(r['name'] for r in runs)}")
            picked.extend(match)
    return picked


def cmd_list() -> int:
    from simdl.catalog import config_names, default_rows, format_names, format_text

    print(format_names(config_names()))
    print("\nalgorithm defaults (from the factories' signatures; '—' = no such argument, '(auto)' = a None default "
          "resolved by the factory):")
    print(format_text(default_rows()))
    return 0


def cmd_run(args) -> int:
    from simdl.config import train_seeds, train_settings
    from simdl.scale import apply_scale
    from simdl.schema import check_config

    check_out(args.out)
    cfg = load_config(args.config)
    for item in args.overrides:
        cfg = apply_override(cfg, item)
    cfg = apply_scale(cfg)
    check_config(cfg)  # every value's type, before anything is built
    train = train_settings(cfg.get("train", {}))  # the defaults, written once (simdl.simulate's)
    seeds = train_seeds(cfg.get("train", {}))  # every row runs over these seeds, batched into one program
    runs = select_runs(expand_runs(cfg), args.runs)

    import jax

    import simdl
    from simdl.plots import plot_runs
    from simdl.recipes import resolve_train
    from simdl.results import combine_seeds, record_id, run_strategy, summary_rows, write_outputs
    from simdl.runtime import validate

    # Everything that can be checked is checked before the first compilation.
    faults = simdl.faults.from_config(train)
    system = simdl.systems.from_config(cfg.get("system"))  # None without a [system] section
    from simdl import participation as part_mod

    participation = part_mod.from_config(cfg.get("participation"),  # None without a [participation] section
                                         base_dir=Path(args.config).parent if args.config else None)
    tb_writer = None
    if args.tensorboard:
        from simdl.tensorboard import MISSING, available
        from simdl.tensorboard import RunWriter as tb_writer

        if not available():
            raise ValueError(MISSING)
    from simdl.sweep import build_task

    task = build_task(cfg.get("task", {}))
    train = resolve_train(train, task)  # steps from train.steps or train.epochs (simdl.recipes)
    built = []
    for run in runs:
        topo, alg = _build_run(run, task, train)
        eval_every = train["eval_every"] or max(1, train["steps"] // 20)
        validate(task, alg, topo, train["steps"], train["batch_size"], eval_every)
        simdl.mixing.choose_method(topo, train["mixing"])
        simdl.faults.check_algorithm(faults, alg, topo, task)
        simdl.systems.check_system(system, topo, alg)
        part_mod.check_participation(participation, task.n_workers, train["steps"], alg.round_length)
        part_mod.check_algorithm(participation, alg, topo, task)
        built.append((run, topo, alg))
    wb = train["worker_batch"]
    if wb is not None and (isinstance(wb, bool) or not isinstance(wb, int) or wb < 1):
        raise ValueError(f"train.worker_batch must be an integer >= 1, got {wb!r}")
    from simdl.runtime import check_compute_dtype, check_execution

    check_execution(train["execution"])
    check_compute_dtype(train["compute_dtype"])
    if args.memory:
        from simdl.memory import estimate, format_estimate

        for run, topo, alg in built:
            est = estimate(task, alg, topo, train["batch_size"], wb, train["mixing"],
                           compute_dtype=train["compute_dtype"])
            print(f"{run['name']}: {format_estimate(est)}", flush=True)

    out = Path(args.out)
    from simdl.sweep import RunStore

    store = RunStore(out)  # DIR/runs/<id>.json per finished run: a re-run skips them and never loses them
    ids = [record_id(cfg.get("task", {}), train, run, cfg.get("system"), cfg.get("participation"))
           for run, _, _ in built]
    todo = [b for b, rid in zip(built, ids, strict=True) if not store.done(rid)]
    if len(todo) < len(built):
        print(f"{len(built) - len(todo)} of {len(built)} runs already finished in {out / 'runs'}, skipped "
              f"(delete their files there to run them again)", flush=True)
    dev = jax.devices()[0]
    payload = {"simdl_version": simdl.__version__, "jax_version": jax.__version__,
               "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg, "task": task.info, "runs": []}
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=train["steps"] * len(todo), unit="step", desc="simdl", dynamic_ncols=True)
    sim_kw = {"steps": train["steps"], "batch_size": train["batch_size"], "eval_every": train["eval_every"],
              "mixing": train["mixing"], "faults": faults, "worker_batch": wb, "execution": train["execution"],
              "compute_dtype": train["compute_dtype"], "system": system, "participation": participation}
    try:
        for (run, topo, alg), rid in zip(built, ids, strict=True):
            if store.done(rid):
                payload["runs"].append(store.load(rid))
                continue
            if bar is not None:
                bar.set_description(run["name"])
            last = [0]
            tbs = [] if tb_writer is None else [
                tb_writer(args.tensorboard, run["name"] if len(seeds) == 1 else f"{run['name']}/seed{s}")
                for s in seeds]

            def progress(step, rows, last=last, tbs=tbs):
                if bar is not None:
                    bar.update(step - last[0])
                    last[0] = step
                if tbs:
                    for tb, row in zip(tbs, rows if isinstance(rows, list) else [rows], strict=True):
                        if row is not None:
                            tb.add_row(row)

            t0 = time.perf_counter()
            try:
                if len(seeds) == 1:
                    results = [simdl.simulate(task, alg, topo, seed=seeds[0], callback=progress, **sim_kw)]
                else:  # the seeds of one row: one compiled program, vmapped over a run axis (simdl.simulate_batch)
                    results = simdl.simulate_batch([task] * len(seeds), lambda hp, alg=alg: alg,
                                                   [{}] * len(seeds), topo, seeds=seeds, callback=progress, **sim_kw)
            finally:
                for tb in tbs:
                    tb.close()
            if bar is not None:
                bar.update(train["steps"] - last[0])
            seed_runs = []
            for s, res in zip(seeds, results, strict=True):
                if res.diverged_at is not None:
                    which = run["name"] if len(seeds) == 1 else f"{run['name']} (seed {s})"
                    msg = f"run {which}: loss became NaN/Inf at step {res.diverged_at}; history kept up to there"
                    (bar.write if bar is not None else print)(msg)
                seed_runs.append({"seed": s, "status": "ok" if res.diverged_at is None else "diverged",
                                  "diverged_at": res.diverged_at,
                                  "history": {k: v.tolist() for k, v in res.history.items()}, "final": res.final})
            bad = [sr["diverged_at"] for sr in seed_runs if sr["diverged_at"] is not None]
            res = results[0]
            record = {
                "id": rid, "name": run["name"], "algorithm": alg.name, "topology": topo.name,
                "status": "diverged" if bad else "ok", "diverged_at": min(bad) if bad else None, "config": run,
                "hyperparams": alg.hyperparams, "seeds": seeds,
                "topology_info": topo.describe(), "mixing": res.info["mixing"], "compiles": res.info["compiles"],
                **run_strategy(res.info),
                "wall_time_s": time.perf_counter() - t0, "compile_time_s": res.info["compile_time_s"],
                # history/final: the mean over seeds (final_std: sample std); seed_runs: every seed's own run
                **combine_seeds(seed_runs), "seed_runs": seed_runs}
            store.save(rid, record)
            payload["runs"].append(json.loads(store.path(rid).read_text()))
            write_outputs(out, payload)  # after every run: finished runs stay written
    finally:
        if bar is not None:
            bar.close()
    if not args.no_plots:
        plot_runs(payload["runs"], out)
    print()
    _print_table(summary_rows(payload["runs"]))
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.csv'}" + ("" if args.no_plots else " and plots")
          + (f"; TensorBoard event files under {args.tensorboard}" if args.tensorboard else ""))
    return 0


def _load_sweep(args) -> dict:
    from simdl.scale import apply_scale
    from simdl.schema import check_config

    cfg = load_config(args.config, extra_sections=("sweep",))
    for item in args.overrides:
        cfg = apply_override(cfg, item, extra_sections=("sweep",))
    cfg = apply_scale(cfg)
    check_config(cfg)  # every value's type and every sweep axis, before the first run
    return cfg


def cmd_sweep(args, cfg: dict | None = None) -> int:
    from simdl.sweep import Planned, RunStore, execute
    from simdl.sweep_report import (
        best_learning_rates,
        describe_best_lr,
        headline_metric,
        plot_sweep,
        write_best_lr,
        write_csv,
    )

    check_out(args.out)
    cfg = cfg if cfg is not None else _load_sweep(args)
    base = Path(args.config).parent if getattr(args, "config", None) else None
    plan = Planned(cfg, base)  # builds and validates every run before anything compiles
    out = check_out(args.out)
    store = RunStore(out)
    finished = sum(store.done(s["id"]) for s in plan.specs)
    pending_groups = [g for g in plan.groups if any(not store.done(s["id"]) for s in g)]
    print(f"{len(plan.specs)} runs in {len(plan.groups)} compile groups; {finished} already finished; "
          f"{len(pending_groups)} compile groups to run")
    if getattr(args, "dry_run", False):
        for g, group in enumerate(plan.groups):
            print(f"  group {g}: {len(group)} run(s): " + "; ".join(s["label"] for s in group))
        return 0
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan.specs), initial=finished, unit="run", desc="sweep", dynamic_ncols=True)

    tb_root = getattr(args, "tensorboard", None)
    if tb_root:
        from simdl.tensorboard import MISSING, available, write_history

        if not available():
            raise ValueError(MISSING)
    written: set = set()

    def on_run(rec):
        if tb_root:
            write_history(tb_root, f"{rec['label']}-{rec['id']}", rec["history"])
            written.add(rec["id"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(rec["label"][:40])
        if rec["status"] != "ok":
            (bar.write if bar is not None else print)(f"run {rec['label']}: diverged at step {rec['diverged_at']}")

    t0 = time.perf_counter()
    try:
        records = execute(plan, store, on_run=on_run)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if tb_root:  # runs finished by an earlier invocation of this sweep
        for rec in records:
            if rec["id"] not in written:
                write_history(tb_root, f"{rec['label']}-{rec['id']}", rec["history"])
    write_csv(records, plan.swept, out)
    lr_rows = best_learning_rates(records, plan.swept) if "learning_rate" in plan.swept else []
    write_best_lr(lr_rows, out)
    if not args.no_plots:
        hm = tuple(args.heatmap.split(",")) if getattr(args, "heatmap", None) else None
        if hm is not None and len(hm) != 2:
            raise ValueError(f"--heatmap needs two keys KEY_X,KEY_Y, got {args.heatmap!r}")
        plot_sweep(records, plan.swept, out, hm)
    metric, _ = headline_metric(records)
    rows = [{"name": r["label"], "status": r["status"], **r["final"], "wall_time_s": r["wall_time_s"]}
            for r in records]
    print()
    _print_table(rows)
    if lr_rows:
        print(f"\nbest learning rate per cell ({metric}):")
        for r in lr_rows:
            print(f"  {describe_best_lr(r, metric)}")
    compiles = sum(1 for g in pending_groups)
    print(f"\n{len(records)} runs, {compiles} compile groups run now, {wall:.1f} s; wrote {out / 'sweep.csv'}")
    return 0


def cmd_tune(args) -> int:
    cfg = _load_sweep(args)
    try:
        lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"--lrs must be positive numbers, got {args.lrs!r}")
    cfg.setdefault("sweep", {})["learning_rate"] = lrs
    if cfg.get("task", {}).get("kind", "classification") == "classification":
        cfg.setdefault("task", {})["validation"] = args.validation
    return cmd_sweep(args, cfg)


def cmd_report(args) -> int:
    """``simdl report DIR``: the tables and plots of a finished ``simdl run`` folder (``results.json``) or sweep
    folder (``runs/*.json``) from the saved results."""
    out = Path(args.dir)
    if (out / "results.json").is_file():
        import csv
        import io

        from simdl.plots import plot_runs
        from simdl.results import SUMMARY_COLUMNS, atomic_write_text, summary_rows

        payload = json.loads((out / "results.json").read_text())
        rows = summary_rows(payload["runs"])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(out / "summary.csv", buf.getvalue())
        written = [] if args.no_plots else plot_runs(payload["runs"], out, payload)
        _print_table(rows)
        print(f"\nwrote {out / 'summary.csv'}" + "".join(f", {p}" for p in written))
        return 0
    runs = out / "runs"
    if not (runs.is_dir() and any(runs.glob("*.json"))):
        raise ValueError(f"report: {out} has neither results.json (simdl run) nor runs/*.json (simdl sweep)")
    from simdl.sweep_report import (
        best_learning_rates,
        describe_best_lr,
        headline_metric,
        infer_swept,
        load_records,
        plot_sweep,
        write_best_lr,
        write_csv,
    )

    records = load_records(out)
    if any("label" not in r for r in records):
        raise ValueError(f"report: {runs} holds run records without results.json (an interrupted simdl run?); "
                         f"run the same simdl run command again to finish it")
    swept = infer_swept(records)
    write_csv(records, swept, out)
    lr_rows = best_learning_rates(records, swept) if "learning_rate" in swept else []
    write_best_lr(lr_rows, out)
    written = []
    if not args.no_plots:
        hm = tuple(args.heatmap.split(",")) if args.heatmap else None
        if hm is not None and len(hm) != 2:
            raise ValueError(f"--heatmap needs two keys KEY_X,KEY_Y, got {args.heatmap!r}")
        written = plot_sweep(records, swept, out, hm)
    metric, _ = headline_metric(records)
    _print_table([{"name": r["label"], "status": r["status"], **r["final"], "wall_time_s": r.get("wall_time_s")}
                  for r in records])
    if lr_rows:
        print(f"\nbest learning rate per cell ({metric}):")
        for r in lr_rows:
            print(f"  {describe_best_lr(r, metric)}")
    print(f"\n{len(records)} runs (swept: {', '.join(swept) or 'nothing'}); wrote {out / 'sweep.csv'}"
          + "".join(f", {p}" for p in written))
    return 0


def _interrupted(args, argv: list[str], signame: str) -> str:
    """The one line printed when a command is stopped: what is saved and how to resume."""
    if args.command not in ("run", "sweep", "tune"):
        return f"simdl: stopped by {signame}"
    runs = Path(args.out) / "runs"
    n = len(list(runs.glob("*.json"))) if runs.is_dir() else 0
    again = " ".join(shlex.quote(a) for a in ("simdl", *argv))
    return (f"simdl: stopped by {signame}; {n} finished run{'' if n == 1 else 's'} saved in {runs}; "
            f"to resume, run the same command again: {again}")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the simdl command: ``simdl: warning: <message>`` on stderr."""
    print(f"simdl: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    as_command = argv is None  # the process is the simdl command (not main([...]) called from Python)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with warnings.catch_warnings():
            if as_command:  # the simdl command prints a warning as one line, without a source excerpt
                warnings.showwarning = _one_line_warning
            return _dispatch(args)
    except (KeyboardInterrupt, Terminated) as e:
        sigint = isinstance(e, KeyboardInterrupt)
        print(_interrupted(args, argv, "Ctrl-C (SIGINT)" if sigint else "SIGTERM"), file=sys.stderr)
        code = 130 if sigint else 143
        if as_command:
            # Every result is already written atomically. An interrupt inside an XLA compilation can leave the
            # runtime in a state that crashes interpreter teardown, so the command exits without it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: The lock file that one ``simdl run``/``sweep``/``tune`` process holds in its ``--out`` folder.
LOCK_FILE = ".simdl.lock"


@contextlib.contextmanager
def out_lock(path: str):
    """Hold an exclusive ``flock`` on ``DIR/.simdl.lock`` while a command writes into ``--out`` DIR. The kernel
    releases it when the process ends, so a killed run never leaves the folder locked.

    Raises:
      ValueError: another process holds the lock (it names that process), or ``--out`` is not a usable folder.
    """
    import fcntl

    out = check_out(path)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115  (held open for the lifetime of the lock)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise ValueError(f"--out: {path} is in use by another simdl process (pid {pid}); wait for it to "
                             "finish or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield out
    finally:
        f.close()  # closing the file releases the lock
        if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:  # nothing written: leave no folder behind
            (out / LOCK_FILE).unlink()
            out.rmdir()


def _dispatch(args) -> int:
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "report":
            return cmd_report(args)
        writes = getattr(args, "out", None) is not None and not getattr(args, "dry_run", False)
        with out_lock(args.out) if writes else contextlib.nullcontext():
            if args.command == "sweep":
                return cmd_sweep(args)
            if args.command == "tune":
                return cmd_tune(args)
            return cmd_run(args)
    except (ValueError, FileNotFoundError) as e:  # bad values; a dataset that is not prepared (says how to)
        print(f"simdl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
