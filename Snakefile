# se3t: train SE(3)-Transformers on QM9, from the download to the report.
#
#   snakemake --profile profiles/local     # one machine: demo config, QM9 subset, CPU
#   snakemake --profile profiles/slurm     # a SLURM cluster: full QM9, GPUs through submitit
#
# The DAG (docs/workflow.md):
#   stage_config, run_config (one resolved config file per stage and run)
#   fetch_raw -> build_dataset -> precompute_basis (N shards) -> finalize_basis
#     -> train (per run) -> evaluate, profile_memory (per run) -> report
# The config file is an se3t config (se3t/config.py) plus `workflow.runs`; it is validated at
# start in workflow/rules/common.smk.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# common.smk puts the se3t next to this Python first on PATH; jobs on other hosts inherit it
envvars:
    "PATH",


include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/basis.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),
    shard=r"\d+",


localrules:
    all,


rule all:
    """The default target: every run's metrics and profile, and the report."""
    input:
        all_targets(),
    default_target: True
