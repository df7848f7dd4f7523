"""``mmlwf <command>``: the command line the workflow rules and users share.

Every command exits 0 on success. Exit codes otherwise: 2 for anything the user can cause
and fix (bad input data or settings, an output that cannot be written, a training whose loss
became NaN or infinite), with one line naming the file (and field and structure where there
is one) and no traceback; 1 for ``validate`` findings; 3 for an aborted ``md``; 75 for an
interrupted training (checkpoint written: run again to resume); 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Sequence

from . import __version__
from .errors import EXPECTED_ERRORS, ConfigError


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(
        args.sources,
        args.output,
        fmt=args.format,
        energy_unit=args.energy_unit,
        length_unit=args.length_unit,
        dipole_unit=args.dipole_unit,
        keys=args.key,
        overwrite=args.overwrite,
        progress=args.progress,
        chunk_atoms=args.chunk_atoms,
        esp_unit=args.esp_unit,
        density=args.density,
        geometry=args.geometry,
        esp_values=args.esp_values,
        points=_point_settings(args),
        total_charge=args.total_charge,
    )
    from .packed import read_manifest

    m = read_manifest(out)
    print(f"wrote {out}: {m['n_molecules']} structures, {m['n_atoms']} atoms")
    return 0


def _point_settings(args: argparse.Namespace, always: bool = False):
    """PointSettings from the --select/--vdw-*/--density-window/--spacing/--max-points/--seed
    options (None when none is given and ``always`` is False: the reader's defaults)."""
    from .esp.points import PointSettings

    given = {k: getattr(args, k) for k in ("inner", "outer", "spacing", "max_points", "seed")
             if getattr(args, k, None) is not None}
    if getattr(args, "density_window", None) is not None:
        given["density_window"] = tuple(args.density_window)
    if not given and args.select is None and not always:
        return None
    mode = args.select or ("density" if getattr(args, "density", None) else "shell")
    return PointSettings(mode=mode, **given)


def _add_point_options(p: argparse.ArgumentParser, spacing: bool) -> None:
    default = "shell" if spacing else "density with --density cubes, else shell"
    p.add_argument("--select", choices=["shell", "density"],
                   help=f"ESP point selection: vdW shell, or electron density window (default: {default})")
    p.add_argument("--vdw-inner", dest="inner", type=float, metavar="X",
                   help="keep points outside X times every vdW radius (default 1.4 shell, 1.0 density)")
    p.add_argument("--vdw-outer", dest="outer", type=float, metavar="X",
                   help="shell: keep points within X times some vdW radius (default 2.0)")
    p.add_argument("--density-window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="density mode: electron density window in e/Bohr^3 (default 1e-4 1e-3)")
    if spacing:
        p.add_argument("--spacing", type=float, metavar="A", help="candidate grid step in Å (default 0.5)")
    p.add_argument("--max-points", type=int, metavar="N", help="keep at most N points per structure (default all)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of that subsampling (default 0)")


def _cmd_label(args: argparse.Namespace) -> int:
    from .label import label_structures
    from .packed import read_manifest

    out = label_structures(
        args.sources, args.output, method=args.method, basis=args.basis, fmt=args.format,
        points=_point_settings(args, always=True), cache_dir=args.cache, max_structures=args.max_structures,
        stride=args.stride, charge=args.charge, spin=args.spin, charges=None if args.charges == "none" else args.charges,
        forces=args.forces, keys=args.key, length_unit=args.length_unit, threads=args.threads,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    m = read_manifest(out)
    lab = m["labeller"]
    print(f"wrote {out}: {m['n_molecules']} structures, {m['n_grid_points']} ESP points "
          f"({lab['computed']} computed, {lab['cached']} from the cache)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate_dataset

    report = validate_dataset(args.dataset, check_checksums=not args.no_checksums)
    if args.report:
        report.write_json(args.report)
    for finding in report.findings:
        stream = sys.stderr if finding.level == "error" else sys.stdout
        print(f"{args.dataset}: {finding.one_line()}", file=stream)
    if not report.ok:
        return 1
    print(f"{args.dataset}: valid ({report.n_molecules} structures, {len(report.warnings)} warning(s))")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import dataset_info, format_info

    info = dataset_info(args.dataset)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _cmd_split(args: argparse.Namespace) -> int:
    from .split import split_dataset

    split = split_dataset(args.dataset, args.output, valid=args.valid, test=args.test, seed=args.seed,
                          group_by=args.group_by)
    sizes = ", ".join(f"{k} {v}" for k, v in split.sizes().items())
    print(f"wrote {args.output}: {sizes}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .stats import compute_stats, write_stats

    stats = compute_stats(args.dataset, args.split)
    write_stats(stats, args.output)
    print(f"wrote {args.output}: {stats['n_train']} training structures")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_loader

    cutoff = None if args.cutoff is not None and args.cutoff <= 0 else args.cutoff
    result = bench_loader(args.dataset, cutoff=cutoff, batch_size=args.batch_size, epochs=args.epochs,
                          prefetch=args.prefetch, workers=args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import exit_code
    from .training.progress import terminal_lines
    from .training.runner import run_training

    with terminal_lines():
        summary = run_training(args.config, args.data, args.split, args.stats, args.output, overrides=args.set,
                               progress=args.progress or None, verbose=args.verbose,
                               summary_every=args.summary_every)
    last = summary.get("last") or {}
    shown = ", ".join(f"{k} {v:.5g}" for k, v in last.items() if k.startswith("valid_") and isinstance(v, float))
    print(f"{summary['status']}: {summary['epochs']} epochs, best epoch {summary['best_epoch']}; {shown}")
    return exit_code(summary)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    meta = export_model(args.run, args.output, which=args.which)
    print(f"wrote {args.output}: {len(meta['paths'])} parameter arrays, sha256 {meta['sha256'][:16]}")
    return 0


def _cmd_md(args: argparse.Namespace) -> int:
    from .md import MDAborted, MDSettings, load_calculator, read_structure, run_md

    settings = MDSettings(steps=args.steps, dt_fs=args.dt_fs, ensemble=args.ensemble,
                          temperature_K=args.temperature_K, friction_per_fs=args.friction, seed=args.seed,
                          log_every=args.log_every, traj_every=args.traj_every,
                          min_distance_A=args.min_distance).check()
    atoms = read_structure(args.structure, args.index)
    calc = load_calculator(args.model, args.which, charge=args.charge)
    try:
        s = run_md(calc, atoms, settings, args.output, overwrite=args.overwrite,
                   info={"model": str(args.model), "structure": str(args.structure), "index": args.index})
    except MDAborted as exc:
        print(f"mmlwf md: aborted: {exc} (partial run in {args.output}.aborted)", file=sys.stderr)
        return 3
    drift = s.get("nve", {}).get("drift_meV_per_atom_per_ps")
    extra = "" if drift is None else f", drift {drift:.3g} meV/atom/ps"
    print(f"wrote {args.output}: {s['steps_done']} steps ({s['simulated_ps']:g} ps), {s['steps_per_s']:.0f} steps/s, "
          f"closest approach {s['closest_approach']['min_distance_A']:.3f} Å{extra}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .analysis.evaluate import evaluate_run, write_atom_predictions, write_metrics, write_predictions

    doc, pred = evaluate_run(args.run, args.data, args.split, subset=args.subset, which=args.checkpoint,
                             batch_size=args.batch_size)
    write_metrics(doc, args.output)
    if args.predictions:
        write_predictions(pred, args.predictions)
    if args.atom_predictions:
        write_atom_predictions(pred, args.atom_predictions)
    m = doc["metrics"]
    shown = ", ".join(f"{k} {m[k]:.5g}" for k in ("energy_mae_eV", "forces_mae_eV_per_A", "dipole_mae_eA",
                                                   "esp_rmse_kcal_per_mol_e") if k in m)
    print(f"wrote {args.output}: {m['n_structures']} {args.subset} structures; {shown}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.compare import compare_runs, write_table

    table = compare_runs(args.runs)
    write_table(table, args.output)
    print(f"wrote {args.output}: {len(table)} runs, {len(table.columns)} columns")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .analysis.evaluate import model_type, run_predictions
    from .analysis.plots import make_plots

    if args.atom_predictions and not args.predictions:
        raise ConfigError("--atom-predictions needs --predictions (the per-structure table)")
    pred = run_predictions(args.run, args.predictions, args.atom_predictions, data=args.data, split=args.split,
                           subset=args.subset)
    paths = make_plots(args.run, args.output, pred, model_type(args.run))
    print(f"wrote {len(paths)} figures to {args.output}: {', '.join(p.name for p in paths)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report

    write_report(args.runs, args.output, title=args.title)
    print(f"wrote {args.output}: {len(args.runs)} run(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmlwf", description="Machine-learned force-field workflow: data, training, evaluation."
    )
    parser.add_argument("--version", action="version", version=f"mmlwf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "convert",
        help="convert NPZ / extxyz (any ase.io format) / ASE db / HDF5 / ESP (cube, grid, DCMNet npz) "
        "files into a packed dataset",
        description="Convert one or more sources (concatenated in order) into a packed dataset "
        "directory in canonical units (Å, eV, eV/Å, e, e·Å). Default units per format: npz eV/Å "
        "(sGDML npz: kcal/mol, or its e_unit/r_unit), extxyz/ase eV/Å, db eV/Å, hdf5 eV/Å "
        "(or the dataset's 'units' attribute); ESP (stored in V): cube Bohr and Hartree/e, esp-grid and "
        "dcmnet-npz Å and Hartree/e. Cube and grid data carry no energy: such datasets have no E field.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="input files")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    p.add_argument("--format", metavar="F", help="npz, extxyz, ase (any ase.io format), db, hdf5, cube, esp-grid, "
                   "dcmnet-npz (default: from the extension; .cube/.cub cube, .npy esp-grid, an .npz with "
                   "esp + vdw_surface/esp_grid dcmnet-npz)")
    p.add_argument("--energy-unit", metavar="U", help="eV, meV, Hartree, kcal/mol, kJ/mol, Rydberg")
    p.add_argument("--length-unit", metavar="U", help="Angstrom, Bohr, nm")
    p.add_argument("--dipole-unit", metavar="U", help="e*Angstrom, Debye, e*Bohr")
    p.add_argument("--key", action="append", default=[], metavar="CANONICAL=SOURCE",
                   help="map a canonical field (R Z N E F D Qtot q) to the source's name; repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--chunk-atoms", type=int, default=1 << 20, metavar="N",
                   help="atoms buffered before each write (bounds memory; default %(default)s)")
    g = p.add_argument_group("ESP data (formats cube, esp-grid, dcmnet-npz)")
    g.add_argument("--esp-unit", metavar="U", help="V, Hartree/e, kcal/mol/e (default Hartree/e for all three)")
    g.add_argument("--density", action="append", metavar="DENS.cube",
                   help="density cube of each potential cube, in the same order; repeatable")
    g.add_argument("--geometry", action="append", metavar="GEOM",
                   help="geometry of each grid file (any ase.io format, Å), in order, or one for all; "
                   "implies --format esp-grid; grids: 'x y z esp' text or .npy (G,4), or (G,3) with --esp-values")
    g.add_argument("--esp-values", action="append", metavar="ESP", help="ESP values of each x-y-z-only grid file")
    g.add_argument("--total-charge", type=float, metavar="Q", help="total charge of cube/grid structures (default 0)")
    _add_point_options(g, spacing=False)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "label",
        help="reference SCF energy, dipole and ESP with pyscf, into a packed dataset",
        description="One pyscf SCF per geometry (any format convert reads): energy (eV), dipole (e·Å), "
        "ESP (V) on points of the vdW shell (or a density window), optional Mulliken charges and forces. "
        "With --cache, finished structures are kept and an interrupted run resumes.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="geometry files")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    p.add_argument("--format", metavar="F", help="input format as for convert (default: from the extension)")
    p.add_argument("--length-unit", metavar="U", help="length unit of the geometries (default: the format's)")
    p.add_argument("--key", action="append", default=[], metavar="CANONICAL=SOURCE", help="as for convert")
    p.add_argument("--method", default="HF", help="HF or a DFT functional, e.g. B3LYP (default %(default)s)")
    p.add_argument("--basis", default="6-31g*", help="basis set (default %(default)s)")
    p.add_argument("--charge", type=int, help="total charge of every molecule (default: the data's Qtot)")
    p.add_argument("--spin", type=int, help="2S (default 0 for even electron counts, else 1)")
    p.add_argument("--charges", choices=["none", "mulliken"], default="none", help="atomic charges (default none)")
    p.add_argument("--forces", action="store_true", help="compute forces too")
    p.add_argument("--cache", metavar="DIR", help="per-structure cache directory (resume)")
    p.add_argument("--max-structures", type=int, metavar="N", help="label only the first N structures")
    p.add_argument("--stride", type=int, default=1, metavar="K",
                   help="label every K-th structure of the sources (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="pyscf OpenMP threads (default: OMP_NUM_THREADS or all cores; 1 is fastest for small molecules)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    _add_point_options(p, spacing=True)
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("validate", help="check a packed dataset's integrity and flag outliers",
                       description="Errors (exit 1): sizes, truncation, offsets, Z range, NaN/Inf, atoms "
                       "closer than 0.1 Å. Warnings (exit 0): atoms closer than 0.5 Å, energy and force "
                       "outliers, duplicate structures.")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--report", metavar="FILE.json", help="write the findings as JSON")
    p.add_argument("--no-checksums", action="store_true", help="skip the manifest checksum check")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("split", help="reproducible train/valid/test split of a packed dataset",
                       description="Sizes are fractions (< 1) or counts (>= 1). The same inputs give a "
                       "byte-identical file.")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("-o", "--output", required=True, metavar="SPLIT.npz")
    p.add_argument("--valid", type=float, default=0.1, metavar="F", help="default %(default)s")
    p.add_argument("--test", type=float, default=0.1, metavar="F", help="default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="default %(default)s")
    p.add_argument("--group-by", choices=["none", "formula"], default="none",
                   help="formula: every conformer of one composition on one side")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("stats", help="statistics of the training split (element energies, force and ESP RMS ...)")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--split", required=True, metavar="SPLIT.npz")
    p.add_argument("-o", "--output", required=True, metavar="STATS.json")
    p.set_defaults(func=_cmd_stats)

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
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="measure a part of the pipeline (loader)")
    bench = p.add_subparsers(dest="target", required=True, metavar="TARGET", parser_class=_Parser)
    p = bench.add_parser("loader", help="batch loader throughput, padding efficiency, shapes, peak memory")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour-list cutoff in Å; 0 for none (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs; rates are from the epochs after the first (default %(default)s)")
    p.add_argument("--prefetch", type=int, default=4, help="batches assembled ahead; 0 for none (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="assembly threads (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("info", help="counts, elements, size histogram and fields of a packed dataset")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="write a trained model to one portable file (no orbax needed to use it)",
                       description="One .npz-based file: model.json, the parameter arrays with their tree "
                       "paths, format version and sha256, written atomically.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.mmlwf")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint (default %(default)s)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("md", help="molecular dynamics (NVE / Langevin NVT) of one molecule with ASE",
                       description="Writes OUT/trajectory.traj, OUT/energy.csv (step, time_fs, Epot_eV, "
                       "Ekin_eV, Etot_eV, T_K, min_distance_A) and OUT/md.json (timing, closest approach, "
                       "NVE energy drift). Exits 3 if atoms come closer than --min-distance.")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run directory or file from 'mmlwf export'")
    p.add_argument("--structure", required=True, metavar="FILE", help="starting structure (any ase.io format)")
    p.add_argument("--index", type=int, default=0, help="frame of FILE (default %(default)s)")
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
                   help="abort when two atoms come closer, Å (default %(default)s)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists")
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a subset of a dataset",
                       description="Energy (per structure and per atom, eV), forces (per component and "
                       "error-vector norm, eV/Å, also per element), dipole (e·Å) and total charge (e) errors "
                       "where the model predicts them, with the best checkpoint's parameters (EMA weights "
                       "when the run kept an EMA).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", required=True, metavar="DIR", help="packed dataset")
    p.add_argument("--split", metavar="SPLIT.npz", help="split file (not needed for --subset all)")
    p.add_argument("--subset", choices=["test", "valid", "train", "all"], default="test", help="default %(default)s")
    p.add_argument("-o", "--output", required=True, metavar="METRICS.json")
    p.add_argument("--predictions", metavar="FILE.csv", help="also write one row per structure")
    p.add_argument("--atom-predictions", metavar="FILE.npz", help="also write the per-atom forces (and charges)")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best", help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
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
    p.add_argument("--subset", choices=["test", "valid", "train", "all"], default="test", help="default %(default)s")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("report", help="one self-contained HTML page on one or many runs",
                       description="Comparison table, metrics, figures (embedded as data URIs; made when a run "
                       "has no plots/ yet) and configuration of each run; no external references.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html")
    p.add_argument("--title", default="mmlwf report", help="default %(default)r")
    p.set_defaults(func=_cmd_report)
    return parser


def _terminate(signum, frame):  # pragma: no cover - exercised through subprocess tests
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (cluster pre-emption, snakemake cancel) unwinds like Ctrl-C: temporaries are removed
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"mmlwf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmlwf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
