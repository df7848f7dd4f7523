"""``mmlwf bench``: throughput figures of the pipeline's parts, as one JSON object."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from .settings.data import DEFAULT_CUTOFF


def rss_anon_mb(pid: int | str = "self") -> float:
    """Resident anonymous memory (``RssAnon``, mapped file pages excluded) of a process, MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakAnonMemory:
    """Samples ``RssAnon`` of a process every ``interval`` s in a thread; ``.peak_mb`` the maximum."""

    def __init__(self, pid: int | str = "self", interval: float = 0.01) -> None:
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, rss_anon_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakAnonMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.peak_mb = max(self.peak_mb, rss_anon_mb(self.pid))
        except (FileNotFoundError, ProcessLookupError):
            pass


def bench_loader(
    dataset: str | os.PathLike,
    *,
    cutoff: float | None = DEFAULT_CUTOFF,
    batch_size: int = 128,
    epochs: int = 2,
    prefetch: int = 4,
    workers: int = 2,
    seed: int = 0,
) -> dict:
    """Iterate ``epochs`` epochs of :class:`~mmlwf.batching.BatchLoader` and measure it.

    Throughput counts real (unpadded) atoms, molecules and pairs per second. ``atoms_per_s``
    and the other rates are the steady state (epochs after the first, which also loads the
    compiled kernels); the first epoch and the one-off set-up (pair counts for planning,
    budgets) are reported separately.
    """
    from .batching import BatchLoader
    from .packed import PackedDataset

    with PeakAnonMemory() as mem:
        ds = PackedDataset(dataset)
        t0 = time.perf_counter()
        loader = BatchLoader(ds, batch_size=batch_size, cutoff=cutoff, prefetch=prefetch, workers=workers, seed=seed)
        setup_s = time.perf_counter() - t0
        per_epoch = []
        for epoch in range(max(1, epochs)):
            c = dict(atoms=0, molecules=0, pairs=0, atom_slots=0, pair_slots=0, batches=0)
            shapes = set()
            t0 = time.perf_counter()
            for batch in loader.epoch(epoch):
                c["atoms"] += int(np.count_nonzero(batch.atom_mask))
                c["molecules"] += int(np.count_nonzero(batch.graph_mask))
                c["pairs"] += int(np.count_nonzero(batch.pairs.mask))
                c["atom_slots"] += batch.atom_mask.shape[0]
                c["pair_slots"] += batch.pairs.mask.shape[0]
                shapes.add(int(batch.shape_id))
                c["batches"] += 1
            c["seconds"] = time.perf_counter() - t0
            c["shapes"] = len(shapes)
            per_epoch.append(c)
    steady = per_epoch[1:] or per_epoch
    total = {k: sum(e[k] for e in steady) for k in ("atoms", "molecules", "pairs", "atom_slots", "pair_slots", "seconds")}
    first = per_epoch[0]
    return {
        "dataset": str(dataset),
        "cutoff": cutoff,
        "batch_size": batch_size,
        "epochs": len(per_epoch),
        "prefetch": prefetch,
        "workers": workers,
        "batches_per_epoch": first["batches"],
        "molecules_per_epoch": first["molecules"],
        "setup_seconds": setup_s,
        "first_epoch_seconds": first["seconds"],
        "first_epoch_atoms_per_s": first["atoms"] / first["seconds"],
        "atoms_per_s": total["atoms"] / total["seconds"],
        "molecules_per_s": total["molecules"] / total["seconds"],
        "pairs_per_s": total["pairs"] / total["seconds"],
        "padding_efficiency_atoms": total["atoms"] / max(total["atom_slots"], 1),
        "padding_efficiency_pairs": total["pairs"] / total["pair_slots"] if total["pairs"] else None,
        "n_shapes": max(e["shapes"] for e in per_epoch),
        "budgets": [b.as_dict() for b in loader.budgets],
        "peak_anon_mb": mem.peak_mb,
    }
