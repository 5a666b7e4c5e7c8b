"""How many threads QSMLib computes with: FFT workers and the BLAS/OpenMP thread pools.

Every FFT in QSMLib runs on :func:`get_threads` threads (``scipy.fft``'s
``workers``, through :func:`qsmlib.fourier.fft_workers`). The count is, first
match wins:

1. the one set with :func:`set_threads` or inside ``with threads(n):``
   (which ``qsm ... --threads N``, each worker of ``qsm batch
   --threads-per-worker N`` and the Slicer modules use);
2. the environment variable ``QSMLIB_FFT_WORKERS``;
3. the CPUs this process may run on.

:func:`set_threads` and :func:`threads` also limit the thread pools of the
BLAS and OpenMP libraries already loaded in the process (numpy's and scipy's
OpenBLAS or MKL, libgomp, ...) to the same count, with threadpoolctl; an
environment variable such as ``OMP_NUM_THREADS`` can do that only before those
libraries are loaded. scipy's BLAS is loaded first, so that it is limited too.

From Python (a notebook, Slicer's Python console)::

    import qsmlib
    qsmlib.set_threads(2)          # from now on, until set_threads(None)
    with qsmlib.threads(1):        # for this block only
        result = reconstruct(...)

The setting is process-wide, like the BLAS pools it limits: change it from one
thread at a time, not from computations running in parallel threads.
"""

import os
import threading
from contextlib import contextmanager

from .errors import QSMInputError

#: Environment variable with the default thread count (below :func:`set_threads`).
ENV_VAR = "QSMLIB_FFT_WORKERS"

_lock = threading.RLock()
_count = None  # set by set_threads / threads: an int, or None for the default
_limits = None  # threadpoolctl's limits object of set_threads, to restore


def check_thread_count(value, name="threads", example="qsmlib.set_threads(4)",
                       default=f"{ENV_VAR}, else all CPUs"):
    """``value`` as a thread count (an int of 1 or more); :class:`QSMInputError` otherwise.

    Accepts ints and strings of digits (command lines, environment variables).
    The error names ``name`` (a flag, a variable), shows ``example`` and says
    what ``default`` is used without a count.
    """
    count = None
    if isinstance(value, str):
        try:
            count = int(value.strip())
        except ValueError:
            count = None
    elif not isinstance(value, bool):
        try:
            count = int(value.__index__())
        except (AttributeError, TypeError):
            count = None
    if count is None or count < 1:
        where = f"{name} " if name else ""
        raise QSMInputError(f"{where}{value!r} is not a thread count: give a whole number of 1 or more (e.g. "
                            f"{example}); without one, the default is {default}")
    return count


def available_cpus():
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def get_threads():
    """The thread count in effect (see the module docstring for where it comes from)."""
    return thread_info()["count"]


def thread_info():
    """``{"count": n, "source": ...}``: the thread count in effect and where it comes from, for provenance.

    Raises
    ------
    QSMInputError
        ``QSMLIB_FFT_WORKERS`` holds something other than a whole number of 1 or more.
    """
    count = _count
    if count is not None:
        return {"count": count, "source": "set_threads"}
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        count = check_thread_count(env, f"the environment variable {ENV_VAR}", f"{ENV_VAR}=4")
        return {"count": count, "source": ENV_VAR}
    return {"count": available_cpus(), "source": "CPU count"}


def _limit_pools(count):
    """Limit the BLAS and OpenMP pools loaded now to ``count`` threads; returns the object that restores them."""
    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, so that its pool is limited too)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=count)


def set_threads(n):
    """Compute with ``n`` threads from now on: FFT workers and BLAS/OpenMP pools.

    Parameters
    ----------
    n : int or None
        1 or more; None goes back to the default (``QSMLIB_FFT_WORKERS`` or all
        CPUs) and restores the BLAS/OpenMP pools as they were.

    Raises
    ------
    QSMInputError
        ``n`` is not a whole number of 1 or more.
    """
    global _count, _limits
    count = None if n is None else check_thread_count(n)
    with _lock:
        if _limits is not None:
            _limits.restore_original_limits()
            _limits = None
        _count = count
        if count is not None:
            _limits = _limit_pools(count)


@contextmanager
def threads(n):
    """Compute with ``n`` threads inside the ``with`` block, then go back to the count before it.

    ``n`` as for :func:`set_threads`; None leaves the count as it is (so that
    callers can pass an optional setting straight through). Blocks nest.
    Yields the count (None for None).
    """
    global _count
    if n is None:
        yield None
        return
    count = check_thread_count(n)
    with _lock:
        previous = _count
        limits = _limit_pools(count)
        _count = count
    try:
        yield count
    finally:
        with _lock:
            limits.restore_original_limits()
            _count = previous


__all__ = ["ENV_VAR", "available_cpus", "check_thread_count", "get_threads", "set_threads", "thread_info", "threads"]
