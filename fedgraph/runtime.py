"""The CPU resources of the process: how many threads PyTorch runs, and how freed memory is
kept for the next round.

* **Threads.** PyTorch's default is one thread per physical core of the machine, whatever
  share of it this process may use; and its OpenMP threads spin for a long while (GNU
  OpenMP: 300,000 iterations) before they sleep when they wait for each other. A container
  limited by a CPU quota, a job pinned to some cores, or a machine shared with other busy
  processes then runs more threads than it has cores, and spinning threads take the cores
  the working ones need. A run trains with as many intra-op threads as the CPUs this
  process may use (its affinity mask and its cgroup's CPU quota, whichever is smaller),
  unless ``--threads`` or ``OMP_NUM_THREADS`` says otherwise, inside :func:`threads`, which
  gives the process its own thread counts back afterwards; and the command line shortens
  the spin to 1,000 iterations (``GOMP_SPINCOUNT``, unless the environment sets it, before
  PyTorch loads): as fast as the default on a quiet machine, and faster on a busy one, where
  spinning threads burn the CPU time the working ones need (the contention benchmark of
  ``docs/speed.md``).
  Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) is slower on a quiet machine: the
  reference engine's many small operations took twice as long.
* **Freed memory.** A round allocates and frees tensors of tens of megabytes. glibc's
  ``malloc`` serves those from fresh ``mmap`` regions and returns them on ``free``, so every
  round faults in its memory page by page again. :func:`keep_freed_memory` tells it to serve
  them from the heap and keep what is freed (``mallopt``): the next round reuses the pages.
  That setting is the process's for good (glibc cannot give back its own dynamic
  thresholds), so only the command line and the benchmarks, which own their process, make
  it (:func:`configure`); :func:`fedgraph.train` in a notebook leaves the allocator as it
  is.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
from pathlib import Path
from typing import Iterator, Optional

import numba
import torch

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def cgroup_cpu_limit(root: Path = Path('/sys/fs/cgroup')) -> Optional[float]:
    """The CPUs this process's cgroup may use (quota over period; ``None``: no quota),
    from cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``."""
    try:
        quota, period = (root / 'cpu.max').read_text().split()
        return None if quota == 'max' else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / 'cpu' / 'cpu.cfs_quota_us').read_text())
        period = int((root / 'cpu' / 'cpu.cfs_period_us').read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's quota
    (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus or 1)


def choose_threads(requested: Optional[int] = None) -> int:
    """``requested``, else ``OMP_NUM_THREADS``, else :func:`available_cpus`."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f'threads must be >= 1, got {requested}')
        return requested
    from_environment = os.environ.get('OMP_NUM_THREADS', '').strip()
    if from_environment.isdigit() and int(from_environment) >= 1:
        return int(from_environment)
    return available_cpus()


def keep_freed_memory() -> bool:
    """Makes glibc's ``malloc`` serve every allocation from the heap and keep freed memory
    in it (no ``mmap`` per allocation, no trimming), so that a round reuses the previous
    round's pages instead of faulting fresh ones in. Returns whether it applied (glibc
    only)."""
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 0)))


def set_threads(count: Optional[int] = None) -> None:
    """Sets the compiled kernels' threads (numba's, at most the threads its pool started
    with) and PyTorch's to ``count`` (default: PyTorch's present count), numba's first: an
    OpenMP pool, numba's default where no TBB is installed, shares PyTorch's OpenMP runtime
    and resets its thread count when it starts."""
    count = torch.get_num_threads() if count is None else count
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def start_kernel_threads() -> None:
    """Starts the compiled kernels' thread pool (numba's) now, keeping PyTorch's thread count:
    an OpenMP pool, numba's default where no TBB is installed, shares PyTorch's OpenMP runtime
    and resets its thread count when it starts, which a kernel's first call would otherwise
    do in the middle of a user's session. The modules with parallel kernels call it when
    they are imported; later calls do nothing."""
    before = torch.get_num_threads()
    numba.get_num_threads()
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@contextlib.contextmanager
def threads(count: Optional[int] = None) -> Iterator[int]:
    """Runs the block with :func:`choose_threads` ``(count)`` intra-op threads for PyTorch
    and the compiled kernels (:func:`set_threads`), and sets both back to what they were
    when it leaves, whatever happens inside. Yields the threads."""
    start_kernel_threads()
    torch_before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    chosen = choose_threads(count)
    try:
        set_threads(chosen)
        yield chosen
    finally:
        numba.set_num_threads(numba_before)
        torch.set_num_threads(torch_before)


def configure(threads: Optional[int] = None, keep_memory: bool = True) -> int:
    """Sets PyTorch's intra-op threads and the compiled kernels' to :func:`choose_threads`
    (:func:`set_threads`) and, with ``keep_memory``, keeps freed memory
    (:func:`keep_freed_memory`), for the rest of the process (the command line's and the
    benchmarks'); returns the threads."""
    count = choose_threads(threads)
    set_threads(count)
    if keep_memory:
        keep_freed_memory()
    return count
