"""The local launcher of ``mmlwf train --num-processes N``: N cooperating processes on this
machine (:mod:`mmlwf.training.distributed`), one CPU device each, for testing what ``srun``
does on a cluster.

The parent starts the children (argument lists, no shell) with :data:`~mmlwf.training.distributed.ENV`
naming the coordinator (``127.0.0.1`` and a free port), the count and each child's id, forwards
SIGTERM and SIGINT to them (they run in their own process group, so a Ctrl-C reaches them
once), waits, and returns 0 when all succeeded; when one fails, the others
are terminated and its exit code is returned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from ..training.distributed import ENV


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(n: int, pid: int, port: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of child ``pid`` of ``n``: one CPU device, the coordinator's address."""
    out = dict(os.environ if env is None else env)
    out[ENV] = f"127.0.0.1:{port},{n},{pid}"
    out["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in out.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    out["XLA_FLAGS"] = " ".join(flags)
    return out


def launch(args: Sequence[str], n: int, env: Mapping[str, str] | None = None, poll_s: float = 0.2) -> int:
    """Run ``python ARGS`` as ``n`` cooperating processes; the exit code (0: all succeeded,
    else the first failure's; a child killed by a signal gives 128 + signal)."""
    if n < 1:
        raise ValueError(f"--num-processes must be >= 1, got {n}")
    port = free_port()
    # own process group: a Ctrl-C in the terminal reaches them once, forwarded (a second SIGINT aborts a training)
    children = [subprocess.Popen([sys.executable, *args], env=child_env(n, k, port, env), process_group=0)
                for k in range(n)]

    def forward(signum, frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        while [c.poll() for c in children].count(None):  # every child polled (its returncode set)
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed and code == 0:
                code = failed[0]
                for c in children:  # the others would wait for it forever
                    if c.poll() is None:
                        c.terminate()
            time.sleep(poll_s)
        if code == 0:
            code = next((c.returncode for c in children if c.returncode != 0), 0)
        return code if code >= 0 else 128 - code
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
