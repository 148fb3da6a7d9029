"""se3t.train.submitit_api against the installed submitit: each internal it relies on is used
here for real (local executor jobs, a SlurmJob for an id, the result and submission pickles), so
a submitit release that changes one fails here, naming it, instead of in a user's job."""

from __future__ import annotations

import pickle
import shutil

import pytest
import submitit

from se3t.errors import Se3tError
from se3t.io import atomic_write
from se3t.train import submitit_api


def test_installed_version_is_a_tested_one():
    assert submitit_api.check_version() == submitit.__version__
    low, high = submitit_api.TESTED
    below = ".".join(map(str, (low[0], low[1] - 1, 0))) if low[1] else f"{low[0] - 1}.99.0"
    for untested in (below, ".".join(map(str, high)) + ".0", "2.0.0"):
        with pytest.raises(Se3tError, match=rf"submitit {untested} .*tested with"):
            submitit_api.check_version(untested)
    assert submitit_api.check_version(".".join(map(str, low)) + ".2rc1")


def test_executor_sets_the_time_out_count_of_the_executor_behind(tmp_path):
    ex = submitit_api.executor(tmp_path, "local", 7)
    assert isinstance(ex, submitit.AutoExecutor)
    assert ex._executor.max_num_timeout == 7  # the internal the launcher relies on
    if shutil.which("sbatch"):  # building it runs no sbatch, but submitit may look for it
        assert submitit_api.executor(tmp_path, "slurm", 5)._executor.max_num_timeout == 5
    assert isinstance(submitit_api.executor(tmp_path, "debug", 5), submitit.AutoExecutor)


def test_outcome_reads_the_result_pickle_of_each_task(tmp_path):
    ex = submitit_api.executor(tmp_path, "local", 1)
    ex.update_parameters(timeout_min=2, tasks_per_node=1, nodes=1)
    # builtins: the job process unpickles them without this test module on its path
    ok, bad = ex.submit(int, "42"), ex.submit(int, "bad value 3")
    assert ok.result() == 42
    with pytest.raises(submitit.core.utils.FailedJobError, match="bad value 3"):
        bad.result()
    assert submitit_api.outcome(ok, 0) == "success"
    assert submitit_api.outcome(bad, 0) == "error"
    with open(bad.task(0).paths.result_pickle, "rb") as fh:  # the format outcome() parses
        kind, trace = pickle.load(fh)
    assert kind == "error" and "ValueError: invalid literal" in trace


def test_attach_builds_a_job_of_several_tasks_for_an_id(tmp_path):
    job = submitit_api.attach(tmp_path, "4242", 2)
    assert isinstance(job, submitit_api.slurm_job_class())
    assert job.job_id == "4242" and job.num_tasks == 2
    assert job.task(1).paths.stderr == tmp_path / "4242_1_log.err"
    assert job.task(0).paths.result_pickle == tmp_path / "4242_0_result.pkl"
    assert job.paths.submitted_pickle == tmp_path / "4242_submitted.pkl"
    assert submitit_api.outcome(job, 1) is None  # nothing written yet


def test_write_submission_is_what_a_job_loads(tmp_path):
    job = submitit_api.attach(tmp_path, "77", 1)
    path = submitit_api.write_submission(
        job, int, ("5",), 30, 2, lambda p, dump: atomic_write(p, dump)
    )
    assert path == job.paths.submitted_pickle
    sub = job.submission()  # submitit's own loader, as the job runs it
    assert sub.function is int and sub.args == ("5",) and sub.result() == 5
    assert sub._timeout_min == 30 and sub._timeout_countdown == 2  # set_timeout's fields


def test_checkpointable_keeps_the_name_and_resubmits():
    class Job:
        def __call__(self, x):
            return x

        def checkpoint(self, x):
            return submitit_api.delayed(type(self)(), x)

    cls = submitit_api.checkpointable(Job)
    assert cls.__name__ == "Job" and issubclass(cls, submitit.helpers.Checkpointable)
    again = cls().checkpoint(3)
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.args == (3,)
