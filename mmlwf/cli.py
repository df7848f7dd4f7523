"""``mmlwf <command>``: the command line the workflow rules and users share.

Every command exits 0 on success and non-zero with a one-line reason on bad input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Sequence

from . import __version__
from .errors import ConfigError, DataError


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
    )
    from .packed import read_manifest

    m = read_manifest(out)
    print(f"wrote {out}: {m['n_molecules']} structures, {m['n_atoms']} atoms")
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

    stats = compute_stats(args.dataset, args.split, cutoff=args.cutoff, batch_size=args.batch_size,
                          n_shapes=args.n_shapes)
    write_stats(stats, args.output)
    shapes = len(stats["batching"]["budgets"])
    print(f"wrote {args.output}: {stats['n_train']} training structures, {shapes} batch shapes")
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
    from .training.runner import run_training

    summary = run_training(args.config, args.data, args.split, args.stats, args.output, overrides=args.set,
                           progress=args.progress or None)
    last = summary.get("last") or {}
    shown = ", ".join(f"{k} {v:.5g}" for k, v in last.items() if k.startswith("valid_") and isinstance(v, float))
    print(f"{summary['status']}: {summary['epochs']} epochs, best epoch {summary['best_epoch']}; {shown}")
    return exit_code(summary)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmlwf", description="Machine-learned force-field workflow: data, training, evaluation."
    )
    parser.add_argument("--version", action="version", version=f"mmlwf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "convert",
        help="convert NPZ / extxyz (any ase.io format) / ASE db / HDF5 files into a packed dataset",
        description="Convert one or more sources (concatenated in order) into a packed dataset "
        "directory in canonical units (Å, eV, eV/Å, e, e·Å). Default units per format: npz eV/Å "
        "(sGDML npz: kcal/mol, or its e_unit/r_unit), extxyz/ase eV/Å, db eV/Å, hdf5 eV/Å "
        "(or the dataset's 'units' attribute).",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="input files")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    p.add_argument("--format", metavar="F", help="npz, extxyz, ase (any ase.io format), db, hdf5 (default: from the extension)")
    p.add_argument("--energy-unit", metavar="U", help="eV, meV, Hartree, kcal/mol, kJ/mol, Rydberg")
    p.add_argument("--length-unit", metavar="U", help="Angstrom, Bohr, nm")
    p.add_argument("--dipole-unit", metavar="U", help="e*Angstrom, Debye, e*Bohr")
    p.add_argument("--key", action="append", default=[], metavar="CANONICAL=SOURCE",
                   help="map a canonical field (R Z N E F D Qtot q) to the source's name; repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--chunk-atoms", type=int, default=1 << 20, metavar="N",
                   help="atoms buffered before each write (bounds memory; default %(default)s)")
    p.set_defaults(func=_cmd_convert)

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

    p = sub.add_parser("stats", help="statistics of the training split (element energies, batch budgets ...)")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--split", required=True, metavar="SPLIT.npz")
    p.add_argument("-o", "--output", required=True, metavar="STATS.json")
    p.add_argument("--cutoff", type=float, default=5.0, help="model cutoff in Å (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per batch on average (default %(default)s)")
    p.add_argument("--n-shapes", type=int, default=4, help="fixed batch shapes (default %(default)s)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("train", help="train a model (or resume its run directory)",
                       description="Train PhysNet on the training split; re-running with the same run "
                       "directory resumes from its latest checkpoint. SIGTERM writes a checkpoint and exits 75.")
    p.add_argument("--config", metavar="CFG.yaml", help="YAML with model: and training: sections (defaults if absent)")
    p.add_argument("--data", required=True, metavar="DIR", help="packed dataset")
    p.add_argument("--split", required=True, metavar="SPLIT.npz")
    p.add_argument("--stats", required=True, metavar="STATS.json")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. training.max_epochs=5; repeatable")
    p.add_argument("--progress", action="store_true", help="progress bar even when not on a terminal")
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
    except (DataError, ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"mmlwf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmlwf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
