"""Run commands: train, export, md, evaluate, compare, plot, report."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..md.settings import ENGINES
from .common import TERMINAL, default_of

_SUBSETS = ("test", "valid", "train", "all")


def _train_argv(args: argparse.Namespace) -> list[str]:
    """The ``python`` arguments of one process of ``args``'s training (without ``--num-processes``)."""
    argv = ["-m", "mmlwf.cli", "train", "--data", str(args.data), "--split", str(args.split), "-o", str(args.output)]
    for flag, value in (("--config", args.config), ("--stats", args.stats), ("--summary-every", args.summary_every)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.set:
        argv += ["--set", item]
    return argv + ["--progress"] * bool(args.progress) + ["--verbose"] * bool(args.verbose)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..steps import train_step
    from ..training import distributed, exit_code
    from ..training.progress import terminal_lines

    if args.num_processes is not None and args.num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {args.num_processes}")
    if (args.num_processes or 1) > 1:  # the local launcher: N processes of this command
        from .launch import launch

        return launch(_train_argv(args), args.num_processes)
    distributed.initialize()  # one of several processes (srun, the launcher): join the others first
    with terminal_lines():
        summary = train_step(args.config, args.data, args.split, args.stats, args.output, overrides=args.set,
                             progress=args.progress or None, verbose=args.verbose, summary_every=args.summary_every,
                             tell=TERMINAL)
    return exit_code(summary)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_model

    meta = export_model(args.run, args.output, which=args.which)
    print(f"wrote {args.output}: {len(meta['paths'])} parameter arrays, sha256 {meta['sha256'][:16]}")
    return 0


def _cmd_md(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..md import MDSettings, read_structure
    from ..md.stops import describe

    settings = MDSettings(steps=args.steps, dt_fs=args.dt_fs, ensemble=args.ensemble,
                          temperature_K=args.temperature_K, friction_per_fs=args.friction, seed=args.seed,
                          log_every=args.log_every, traj_every=args.traj_every,
                          min_distance_A=args.min_distance, bond_factor=args.bond_factor,
                          uncertainty_upper_eV_per_A=args.uncertainty_upper,
                          uncertainty_lower_eV_per_A=args.uncertainty_lower).check()
    if args.replicas < 1:
        raise ConfigError(f"md: --replicas must be >= 1, got {args.replicas}")
    if args.engine == "jax-md":
        from ..md.jax_engine import import_jax_md

        import_jax_md()  # a missing extra is said before anything is loaded
    indices = [i for i in args.index for _ in range(args.replicas)]
    starts = [read_structure(args.structure, i) for i in args.index for _ in range(args.replicas)]
    out = Path(args.output)
    if len(starts) == 1:
        outdirs = [out]
    else:  # OUTDIR/replica_000, ... : start k has seed --seed + k
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
        outdirs = [out / f"replica_{k:03d}" for k in range(len(starts))]
    info = {"model": str(args.model), "structure": str(args.structure)}
    if args.engine == "jax-md":
        from ..md import load_trained, run_md_jax

        runs = run_md_jax(load_trained(args.model, args.which), starts, settings, outdirs, charge=args.charge,
                          overwrite=args.overwrite, info=[info | {"index": i, "seed": settings.seed + k}
                                                          for k, i in enumerate(indices)])
    else:
        from ..md import load_calculator, run_md

        calc = load_calculator(args.model, args.which, charge=args.charge)
        runs = [run_md(calc, a, dataclasses.replace(settings, seed=settings.seed + k), o, overwrite=args.overwrite,
                       info=info | {"index": i, "seed": settings.seed + k})
                for k, (a, o, i) in enumerate(zip(starts, outdirs, indices))]
    stopped = 0
    for s, o in zip(runs, outdirs):
        drift = s.get("nve", {}).get("drift_meV_per_atom_per_ps")
        extra = "" if drift is None else f", drift {drift:.3g} meV/atom/ps"
        print(f"wrote {o}: {s['steps_done']} steps ({s['simulated_ps']:g} ps), {s['steps_per_s']:.0f} steps/s, "
              f"closest approach {s['closest_approach']['min_distance_A']:.3f} Å{extra}")
        if s["stopped"]:
            stopped += 1
            print(f"mmlwf md: stopped: {describe(s['stopped'])} ({o}/md.json)", file=sys.stderr)
    return 3 if stopped else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..steps import evaluate_step

    evaluate_step(args.run, args.data, args.split, args.output, predictions=args.predictions,
                  atom_predictions=args.atom_predictions, plots=args.plots, subset=args.subset,
                  checkpoint=args.checkpoint, batch_size=args.batch_size, tell=TERMINAL)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..analysis.compare import compare_runs, write_table

    table = compare_runs(args.runs)
    write_table(table, args.output)
    print(f"wrote {args.output}: {len(table)} runs, {len(table.columns)} columns")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ..analysis.evaluate import model_type, run_predictions
    from ..analysis.plots import make_plots

    if args.atom_predictions and not args.predictions:
        raise ConfigError("--atom-predictions needs --predictions (the per-structure table)")
    pred = run_predictions(args.run, args.predictions, args.atom_predictions, data=args.data, split=args.split,
                           subset=args.subset)
    paths = make_plots(args.run, args.output, pred, model_type(args.run))
    print(f"wrote {len(paths)} figures to {args.output}: {', '.join(p.name for p in paths)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..steps import report_step

    report_step(args.runs, args.output, title=args.title, tell=TERMINAL)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The run commands' parsers."""
    p = sub.add_parser("train", help="train a model (or resume its run directory)",
                       description="Train PhysNet or DCMNet (model.type) on the training split; re-running with the same run "
                       "directory resumes from its latest checkpoint. SIGTERM writes a checkpoint and exits 75.")
    p.add_argument("--config", metavar="CFG.yaml", help="YAML with model: and training: sections (defaults if absent)")
    p.add_argument("--data", required=True, metavar="DIR", help="packed dataset")
    p.add_argument("--split", required=True, metavar="SPLIT.npz")
    p.add_argument("--stats", metavar="STATS.json", help="training statistics (needed for physnet, unused by dcmnet)")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. training.max_epochs=5; repeatable")
    p.add_argument("--progress", action="store_true",
                   help="progress bar even when not on a terminal (redrawn once per --summary-every there)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="a line per epoch in the terminal (train.log and history.csv always have them)")
    p.add_argument("--summary-every", type=float, metavar="SECONDS",
                   help="at most one summary line per SECONDS, besides the first and last epoch's "
                   "(default: one a minute)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="train as N cooperating processes on this machine (one CPU device each, gloo "
                   "collectives: a test of what 'srun -n N mmlwf train ...' does on a cluster)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="write a trained model to one portable file (no orbax needed to use it)",
                       description="One .npz-based file: model.json, the parameter arrays with their tree "
                       "paths, format version and sha256, written atomically.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.mmlwf")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint (default %(default)s)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("md", help="molecular dynamics (NVE / Langevin NVT) of one molecule (ASE or JAX-MD)",
                       description="Writes OUT/trajectory.traj, OUT/energy.csv (step, time_fs, Epot_eV, "
                       "Ekin_eV, Etot_eV, T_K, min_distance_A, and max_force_uncertainty_eV_per_A for an ensemble) "
                       "and OUT/md.json (timing, closest approach, NVE energy drift, stopped, candidates). "
                       "A run stops early (md.json 'stopped': reason, step, time_fs, value, atoms) when atoms "
                       "come closer than --min-distance, a bond of the start stretches beyond --bond-factor, the "
                       "energy is not finite or an ensemble's largest force uncertainty exceeds "
                       "--uncertainty-upper; OUT then holds the run up to that step and the command exits 3. "
                       "Several starts (--index, --replicas) go to OUT/replica_000, ...; --engine jax-md "
                       "runs them as one batch (the 'md' extra).")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run directory or file from 'mmlwf export'")
    p.add_argument("--structure", required=True, metavar="FILE", help="starting structure (any ase.io format)")
    p.add_argument("--index", type=int, nargs="+", default=[0],
                   help="frame(s) of FILE, one composition (default %(default)s)")
    p.add_argument("--replicas", type=int, default=1,
                   help="trajectories per start, seeds --seed, --seed + 1, ... (default %(default)s)")
    p.add_argument("--engine", choices=list(ENGINES), default="ase",
                   help="ase: one step per Python call; jax-md: many compiled steps per call, starts batched "
                   "(needs the 'md' extra) (default %(default)s)")
    p.add_argument("--steps", type=int, required=True, metavar="N")
    p.add_argument("--dt-fs", type=float, default=0.5, help="time step in fs (default %(default)s)")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nve", help="default %(default)s")
    p.add_argument("--temperature-K", type=float, default=300.0,
                   help="initial velocities and Langevin bath, K (default %(default)s)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="velocities and Langevin noise (default %(default)s)")
    p.add_argument("--charge", type=float, default=0.0, help="total charge in e (default %(default)s)")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint of RUN (default %(default)s)")
    p.add_argument("--log-every", type=int, default=1, help="energy.csv row every N steps (default %(default)s)")
    p.add_argument("--traj-every", type=int, default=10, help="trajectory frame every N steps (default %(default)s)")
    p.add_argument("--min-distance", type=float, default=0.5,
                   help="stop when two atoms come closer, Å; 0: never (default %(default)s)")
    p.add_argument("--bond-factor", type=float, metavar="F",
                   help="stop when a bond of the start structure stretches beyond F times its length (default: never)")
    p.add_argument("--uncertainty-upper", type=float, metavar="EV_PER_A",
                   help="stop when an ensemble's largest per-atom force uncertainty exceeds this, eV/Å")
    p.add_argument("--uncertainty-lower", type=float, metavar="EV_PER_A",
                   help="frames above this (and not above --uncertainty-upper) are md.json's candidates, eV/Å")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists")
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a subset of a dataset (and its figures)",
                       description="Energy (per structure and per atom, eV), forces (per component and "
                       "error-vector norm, eV/Å, also per element), dipole (e·Å) and total charge (e) errors "
                       "where the model predicts them, with the best checkpoint's parameters (EMA weights "
                       "when the run kept an EMA). With --data/--split repeated (a mixture's members), the "
                       "top-level metrics, predictions and figures are the first dataset's and METRICS.json "
                       "adds per_dataset metrics, as the workflow's evaluate rule writes them.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", required=True, action="append", metavar="DIR", help="packed dataset; repeatable")
    p.add_argument("--split", action="append", metavar="SPLIT.npz",
                   help="split file of each --data, in order (not needed for --subset all)")
    p.add_argument("--subset", choices=_SUBSETS, default="test", help="default %(default)s")
    p.add_argument("-o", "--output", required=True, metavar="METRICS.json")
    p.add_argument("--predictions", metavar="FILE.csv", help="also write one row per structure")
    p.add_argument("--atom-predictions", metavar="FILE.npz", help="also write the per-atom forces (and charges)")
    p.add_argument("--plots", metavar="DIR", help="also write the run's figures (as 'mmlwf plot') into DIR")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best", help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=default_of("mmlwf.analysis.evaluate:evaluate_run", "batch_size"),
                   help="default %(default)s")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="one table row per run: hyperparameters, metrics, time, parameters")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("-o", "--output", required=True, metavar="TABLE.csv")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("plot", help="figures of a run (learning curves, parity, errors) as PNG files",
                       description="Predictions come from --predictions (+ --atom-predictions), else from "
                       "RUN/predictions.csv + RUN/predictions_atoms.npz, else from evaluating the run on "
                       "--data/--split (default: the dataset and split it was trained on).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--predictions", metavar="FILE.csv", help="per-structure table from mmlwf evaluate")
    p.add_argument("--atom-predictions", metavar="FILE.npz", help="per-atom file from mmlwf evaluate")
    p.add_argument("--data", metavar="DIR", help="packed dataset to evaluate on when there are no predictions")
    p.add_argument("--split", metavar="SPLIT.npz")
    p.add_argument("--subset", choices=_SUBSETS, default="test", help="default %(default)s")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("report", help="one self-contained HTML page on one or many runs",
                       description="Comparison table, metrics, figures (embedded as data URIs; made when a run "
                       "has no plots/ yet) and configuration of each run; no external references.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html")
    p.add_argument("--table", metavar="TABLE.csv", help="also write the comparison table (as 'mmlwf compare')")
    p.add_argument("--title", default=default_of("mmlwf.analysis.report:write_report", "title"),
                   help="default %(default)r")
    p.set_defaults(func=_cmd_report)
