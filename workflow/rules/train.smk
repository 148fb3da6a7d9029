# Training stage (issue 5's `se3t launch`).  A local rule: `se3t launch` submits the training job
# through submitit (SLURM, or the local launcher) and waits for it, so the cluster job is
# submitted once, by submitit, never by Snakemake's executor as well.
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
        unpack(train_inputs),
    output:
        done=touch(f"{RESULTS}/runs/{{run}}/train.done"),
    params:
        config=CONFIGFILE,
        overrides=lambda wildcards, resources: launch_overrides(wildcards.run, resources),
    log:
        f"{LOGS}/train/{{run}}.log",
    shell:
        "se3t launch --config {params.config:q} {params.overrides} > {log:q} 2>&1"
