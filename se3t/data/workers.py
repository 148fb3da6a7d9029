"""The worker processes of a dataset build: one way to start them so that a stop is never lost.

The command line turns SIGTERM (and Ctrl-C) into an exception in the main process, so that
temporary output is removed. Forking a pool races with that in three ways:

- a signal that lands while the parent runs its after-fork hooks (``logging`` has one) raises
  there, where Python only prints "Exception ignored", and the build goes on to exit 0;
- one that lands elsewhere inside ``Pool()`` leaves a pool that nobody holds, whose handler
  thread forks new workers after the parent has given up (they then keep its pipes open);
- a worker runs the parent's handler until its initializer has run, so ``pool.terminate()`` in
  that window prints a traceback from the worker instead of ending it.

So while the pool forks, the parent only records these signals, and they are blocked so that
every worker (the ones forked later by the pool's own thread too) starts with them blocked.
A worker sets its own actions first and only then unblocks them. Once the pool exists, the
parent puts its handlers back and raises a signal it recorded, where the caller's cleanup runs.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import signal
import threading
from collections.abc import Callable

__all__ = ["fork_pool"]

_STOPS = (signal.SIGTERM, signal.SIGINT)


def _worker_start(initializer: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # pool.terminate() just ends a worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    if initializer is not None:
        initializer()


def fork_pool(
    processes: int, initializer: Callable[[], None] | None = None
) -> multiprocessing.pool.Pool:
    """A ``fork`` pool of ``processes`` workers that run ``initializer`` first; the caller
    terminates it (``with``, or ``terminate()`` in a ``finally``) as any Pool."""
    recorded: list[int] = []
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
        for sig in _STOPS:
            previous[sig] = signal.signal(sig, lambda signum, frame: recorded.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    pool = None
    try:
        pool = multiprocessing.get_context("fork").Pool(
            processes, initializer=_worker_start, initargs=(initializer,)
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        for sig in dict.fromkeys(recorded):
            signal.raise_signal(sig)  # now the caller's handler runs, here
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    return pool
