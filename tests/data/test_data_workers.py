"""The dataset build's worker pool never loses a SIGTERM that lands while it forks (CI failure
of test_sigterm_during_data_build_cleans_up_and_says_so: an exit 0, and orphan workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# a signal sent from an after-fork hook lands exactly where Python swallows exceptions
_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys
    from se3t.errors import Terminated
    from se3t.data.workers import fork_pool

    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        pool = {make}
    except Terminated:
        print("terminated; workers left:", len(multiprocessing.active_children()))
        sys.exit(0)
    pool.terminate()
    print("the signal was lost")
    """
)


def _run(make: str) -> subprocess.CompletedProcess:
    code = _SCRIPT.format(make=make)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_sigterm_while_the_pool_forks_is_raised_once_it_exists():
    done = _run("fork_pool(2)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "terminated; workers left: 0"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_a_plain_fork_pool_loses_it():
    """The race the module exists for, so that the test above can fail."""
    done = _run('multiprocessing.get_context("fork").Pool(2)')
    assert done.stdout.strip() == "the signal was lost"
    assert "Exception ignored" in done.stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_the_pool_runs_the_initializer_and_the_work(processes):
    from se3t.data.workers import fork_pool

    with fork_pool(processes, initializer=_init) as pool:
        assert pool.map(_read, range(4)) == [7, 8, 9, 10]


_STATE = {"base": 0}


def _init():
    _STATE["base"] = 7


def _read(i):
    return _STATE["base"] + i
