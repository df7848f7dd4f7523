"""``mmlwf bench``: throughput figures of the pipeline's parts, as one JSON object."""

from __future__ import annotations

import os
import threading
import time

import numpy as np


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
    cutoff: float | None = 5.0,
    batch_size: int = 128,
    epochs: int = 1,
    prefetch: int = 2,
    seed: int = 0,
) -> dict:
    """Iterate ``epochs`` epochs of :class:`~mmlwf.batching.BatchLoader` and measure it.

    Throughput counts real (unpadded) atoms, molecules and pairs per second of iteration;
    the one-off set-up (pair counts for planning, budgets) is reported separately.
    """
    from .batching import BatchLoader
    from .packed import PackedDataset

    with PeakAnonMemory() as mem:
        ds = PackedDataset(dataset)
        t0 = time.perf_counter()
        loader = BatchLoader(ds, batch_size=batch_size, cutoff=cutoff, prefetch=prefetch, seed=seed)
        setup_s = time.perf_counter() - t0
        atoms = molecules = pairs = atom_slots = pair_slots = batches = 0
        shapes = set()
        t0 = time.perf_counter()
        for epoch in range(epochs):
            for batch in loader.epoch(epoch):
                n_at = int(np.count_nonzero(batch["atom_mask"]))
                atoms += n_at
                molecules += int(np.count_nonzero(batch["graph_mask"]))
                pairs += int(np.count_nonzero(batch["pair_mask"]))
                atom_slots += batch["atom_mask"].shape[0]
                pair_slots += batch["pair_mask"].shape[0]
                shapes.add(int(batch["shape_id"]))
                batches += 1
        seconds = time.perf_counter() - t0
    return {
        "dataset": str(dataset),
        "cutoff": cutoff,
        "batch_size": batch_size,
        "epochs": epochs,
        "batches": batches,
        "seconds": seconds,
        "setup_seconds": setup_s,
        "atoms_per_s": atoms / seconds,
        "molecules_per_s": molecules / seconds,
        "pairs_per_s": pairs / seconds,
        "padding_efficiency_atoms": atoms / max(atom_slots, 1),
        "padding_efficiency_pairs": pairs / pair_slots if pairs and pair_slots else None,
        "n_shapes": len(shapes),
        "budgets": [b.as_dict() for b in loader.budgets],
        "peak_anon_mb": mem.peak_mb,
    }
