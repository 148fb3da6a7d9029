# Training stage (issue 5's `se3t launch`).  A local rule: `se3t launch` submits the training job
# through submitit (SLURM, or the local launcher) and waits for it, so the cluster job is submitted
# once, by submitit, never by Snakemake's own executor as well.  Its outputs are flagged
# update(): Snakemake must not delete the checkpoints of an interrupted run before rerunning the
# rule, because `se3t train` resumes from them.


localrules:
    train,


rule train:
    """Train one run of `workflow.runs`; resumes from the run folder's last checkpoint."""
    input:
        unpack(train_inputs),
    output:
        best=update(f"{RESULTS}/runs/{{run}}/best.pt"),
        config=update(f"{RESULTS}/runs/{{run}}/config.yaml"),
        metrics=update(f"{RESULTS}/runs/{{run}}/metrics.jsonl"),
    params:
        config=CONFIGFILE,
        overrides=lambda wildcards, resources: launch_overrides(wildcards.run, resources),
    log:
        f"{LOGS}/train/{{run}}.log",
    shell:
        "se3t launch {params.config:q} {params.overrides} > {log:q} 2>&1"
