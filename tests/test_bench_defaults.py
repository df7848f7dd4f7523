"""The accuracy and peer benchmarks train with the project's defaults (the settings a user's
experiment gets), not with copies of them."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy_rmd17  # noqa: E402
import peer_apax  # noqa: E402


def test_the_benchmarks_set_only_the_budget():
    config = accuracy_rmd17.physnet_config()
    assert config == {"model": {"type": "physnet"}, "training": {"max_epochs": 1_000_000}}
    assert peer_apax.physnet_config is accuracy_rmd17.physnet_config  # the peer benchmark's mmlwf side
    assert set(accuracy_rmd17.SMOKE_MODEL) == {"features"}  # --smoke only narrows the model

