"""SLURM tests: the ``slurm_cluster`` fixture lives in ``tests/slurm/cluster.py``, which
``tests/conftest.py`` registers as a plugin, so the workflow tests share the same cluster."""
