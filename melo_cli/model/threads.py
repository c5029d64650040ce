"""How many CPU threads torch may use: chosen, not left to torch's default.

torch starts one OpenMP thread per physical core. On a shared or busy machine those threads spin
at every barrier while the OS runs something else, and a small model's many tiny kernels pay that
at every op: the quick start's `melo edit` took 42-59 s with the default on a busy 2-core machine
and 2.5 s with one thread. So:
- OMP_NUM_THREADS or MELO_THREADS, when set, decide (MELO_THREADS wins);
- a model under SMALL_MODEL parameters gets one thread (its kernels are too small to split);
- a larger one gets the cores that are idle now (available cores minus the 1-minute load, at
  least one), never more than torch's default.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("melo")

SMALL_MODEL = 20_000_000


def choose(n_parameters: int, default: int, available: int, load: float,
           environ: dict[str, str] | None = None) -> int:
    """The thread count for a model of n_parameters (a pure function of what it is given)."""
    environ = os.environ if environ is None else environ
    for name in ("MELO_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if n_parameters < SMALL_MODEL:
        return 1
    idle = int(available - load + 0.5)
    return max(1, min(default, available, idle))


def configure(model) -> int:
    """Set torch's intra-op thread count for this model; returns it."""
    import torch

    n_parameters = sum(p.numel() for p in model.parameters())
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = choose(n_parameters, torch.get_num_threads(), available, load)
    torch.set_num_threads(threads)
    log.debug("torch threads: %d (model of %d parameters, %d cores available, load %.1f)", threads,
              n_parameters, available, load)
    return threads
