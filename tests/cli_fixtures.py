"""A packed, split rMD17 ethanol dataset with its statistics, for the CLI tests."""

from __future__ import annotations

from pathlib import Path

from .conftest import shared_file


def make_ethanol(root: Path, *, valid: int, test: int) -> Path:
    """``root/ds`` (the 1000 rMD17 ethanol structures), ``root/split.npz`` (``valid`` and
    ``test`` structures, the rest for training, seed 0) and ``root/stats.json`` (batch size
    10); returns ``root``."""
    from mmlwf.convert import convert
    from mmlwf.split import split_dataset
    from mmlwf.stats import compute_stats, write_stats

    ds = convert([shared_file("rmd17_ethanol_train_1000.xyz")], root / "ds")
    split_dataset(ds, root / "split.npz", valid=valid, test=test, seed=0)
    write_stats(compute_stats(ds, root / "split.npz"), root / "stats.json")
    return root
