# Training stage.  A local rule: `se3t launch` submits the training job through submitit (SLURM,
# or the local launcher) and waits for it, so the cluster job is submitted once, by submitit,
# never by Snakemake's executor as well.
#
# The run folder's files (best.pt, last.pt, metrics.jsonl, config.yaml) are deliberately not
# declared outputs: Snakemake deletes declared outputs before rerunning a job and after a failed
# one (and reverts update() outputs to their previous version), which would throw away the
# checkpoints that an interrupted run resumes from.  The declared output is a marker that
# Snakemake itself touches when `se3t launch` has succeeded.


localrules:
    train,


rule train:
    """Train one run of `workflow.runs`; continues from the run folder's last checkpoint."""
    input:
        config=rules.run_config.output.config,
        dataset=rules.build_dataset.output.dataset,
        basis=basis_input,
    output:
        done=touch(f"{run_dir('{run}')}/train.done"),
    params:
        job_shape=lambda wildcards, resources: launch_overrides(wildcards.run, resources),
    log:
        f"{LOGS}/train/{{run}}.log",
    shell:
        "se3t launch --config {input.config:q} {params.job_shape} > {log:q} 2>&1"
