"""Data commands: convert, label, validate, split, stats, info, bench."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..convert import ConvertOptions
from .common import TERMINAL, Parser, add_point_options, default_of, point_options

_ESP_GROUP = "ESP data (formats cube, esp-grid, dcmnet-npz)"


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..steps import convert_step, point_settings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ConvertOptions) if f.name != "points"}
    points = point_settings(point_options(args), density=bool(args.density), always=False)
    convert_step(args.sources, args.output, ConvertOptions(**given, points=points), overwrite=args.overwrite,
                 progress=args.progress, tell=TERMINAL)
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from ..steps import label_step, point_settings

    label_step(args.sources, args.output, cache_dir=args.cache, threads=args.threads, overwrite=args.overwrite,
               progress=args.progress, tell=TERMINAL, method=args.method, basis=args.basis, fmt=args.format,
               points=point_settings(point_options(args)), max_structures=args.max_structures, stride=args.stride,
               charge=args.charge, spin=args.spin, charges=None if args.charges == "none" else args.charges,
               forces=args.forces, keys=args.key, length_unit=args.length_unit)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..steps import validate_step

    report = validate_step(args.dataset, args.report, check_checksums=not args.no_checksums, tell=TERMINAL)
    return 0 if report.ok else 1


def _cmd_split(args: argparse.Namespace) -> int:
    from ..steps import split_step

    split_step(args.dataset, args.output, valid=args.valid, test=args.test, seed=args.seed, group_by=args.group_by,
               tell=TERMINAL)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from ..steps import stats_step

    stats_step(args.dataset, args.split, args.output, element_energies=args.element_energies, tell=TERMINAL)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..info import dataset_info, format_info

    info = dataset_info(args.dataset)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import bench_loader

    cutoff = None if args.cutoff is not None and args.cutoff <= 0 else args.cutoff
    result = bench_loader(args.dataset, cutoff=cutoff, batch_size=args.batch_size, epochs=args.epochs,
                          prefetch=args.prefetch, workers=args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


def _add_convert_options(p: argparse.ArgumentParser) -> None:
    """The options made from :class:`~mmlwf.convert.ConvertOptions`' fields (and the ESP
    point options for its ``points``)."""
    esp = p.add_argument_group(_ESP_GROUP)
    for f in dataclasses.fields(ConvertOptions):
        meta = dict(f.metadata)
        flag, help_text = meta.pop("flag"), meta.pop("help")
        if flag is None:
            continue
        target = esp if meta.pop("esp", False) else p
        if f.default is not None:
            help_text += " (default %(default)s)"
        target.add_argument(flag, dest=f.name, default=f.default, help=help_text, **meta)
    add_point_options(esp, spacing=False)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The data commands' parsers."""
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
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    _add_convert_options(p)
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
    p.add_argument("--key", action="append", metavar="CANONICAL=SOURCE", help="as for convert")
    p.add_argument("--method", default=default_of("mmlwf.label:label_structures", "method"),
                   help="HF or a DFT functional, e.g. B3LYP (default %(default)s)")
    p.add_argument("--basis", default=default_of("mmlwf.label:label_structures", "basis"), help="basis set (default %(default)s)")
    p.add_argument("--charge", type=int, help="total charge of every molecule (default: the data's Qtot)")
    p.add_argument("--spin", type=int, help="2S (default 0 for even electron counts, else 1)")
    p.add_argument("--charges", choices=["none", "mulliken"], default="none", help="atomic charges (default none)")
    p.add_argument("--forces", action="store_true", help="compute forces too")
    p.add_argument("--cache", metavar="DIR", help="per-structure cache directory (resume)")
    p.add_argument("--max-structures", type=int, metavar="N", help="label only the first N structures")
    p.add_argument("--stride", type=int, default=default_of("mmlwf.label:label_structures", "stride"), metavar="K",
                   help="label every K-th structure of the sources (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="pyscf OpenMP threads (default: OMP_NUM_THREADS or all cores; 1 is fastest for small molecules)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    add_point_options(p, spacing=True)
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
    for name in ("valid", "test"):
        p.add_argument(f"--{name}", type=float, default=default_of("mmlwf.split:split_dataset", name), metavar="F",
                       help="default %(default)s")
    p.add_argument("--seed", type=int, default=default_of("mmlwf.split:split_dataset", "seed"), help="default %(default)s")
    p.add_argument("--group-by", metavar="BY", default=default_of("mmlwf.split:split_dataset", "group_by"),
                   help="none, or formula: every conformer of one composition on one side (default %(default)s)")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("stats", help="statistics of the training split (element energies, force and ESP RMS ...)")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--split", required=True, metavar="SPLIT.npz")
    p.add_argument("-o", "--output", required=True, metavar="STATS.json")
    p.add_argument("--element-energies", metavar="FILE|fit|auto",
                   default=default_of("mmlwf.stats:compute_stats", "element_energies"),
                   help="per-element reference energies: a file of isolated atoms (any format convert reads, one "
                   "atom per structure, one per element), fit (least squares on the element counts, refused when "
                   "the training compositions do not determine them) or auto (fit, warned about where they are not "
                   "determined) (default %(default)s)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("bench", help="measure a part of the pipeline (loader)")
    bench = p.add_subparsers(dest="target", required=True, metavar="TARGET", parser_class=Parser)
    p = bench.add_parser("loader", help="batch loader throughput, padding efficiency, shapes, peak memory")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--cutoff", type=float, default=default_of("mmlwf.bench:bench_loader", "cutoff"),
                   help="neighbour-list cutoff in Å; 0 for none (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=default_of("mmlwf.bench:bench_loader", "batch_size"),
                   help="default %(default)s")
    p.add_argument("--epochs", type=int, default=default_of("mmlwf.bench:bench_loader", "epochs"),
                   help="epochs; rates are from the epochs after the first (default %(default)s)")
    p.add_argument("--prefetch", type=int, default=default_of("mmlwf.bench:bench_loader", "prefetch"),
                   help="batches assembled ahead; 0 for none (default %(default)s)")
    p.add_argument("--workers", type=int, default=default_of("mmlwf.bench:bench_loader", "workers"),
                   help="assembly threads (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("info", help="counts, elements, size histogram and fields of a packed dataset")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)
