# Evaluation stage (issue 7's `se3t evaluate` and `se3t profile`).


rule evaluate:
    """MAE and RMSE per target on the test split, predictions, parity plot, error histogram."""
    input:
        trained=rules.train.output.done,
        dataset=DATASET,
    output:
        metrics=f"{RESULTS}/runs/{{run}}/metrics.json",
        predictions=f"{RESULTS}/runs/{{run}}/predictions.csv",
        parity=report(
            f"{RESULTS}/runs/{{run}}/parity.png",
            caption="../report/parity.rst",
            category="Accuracy",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "parity"},
        ),
        errors=report(
            f"{RESULTS}/runs/{{run}}/errors.png",
            caption="../report/errors.rst",
            category="Accuracy",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "error histogram"},
        ),
    params:
        checkpoint=lambda wildcards, input: os.path.join(os.path.dirname(input.trained), "best.pt"),
        split=lambda wildcards: RUNS[wildcards.run].eval.split,
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/{{run}}.log",
    shell:
        "se3t evaluate {params.checkpoint:q} --split {params.split} --out {params.out:q}"
        " > {log:q} 2>&1"


rule profile_memory:
    """Peak memory and molecules/s per batch size, mode and path, each point a few training
    steps in a fresh process, with the run's model on real molecules of the dataset.  Needs no
    trained weights, so it runs beside training."""
    input:
        dataset=DATASET,
    output:
        memory=f"{RESULTS}/runs/{{run}}/memory.json",
        memory_plot=report(
            f"{RESULTS}/runs/{{run}}/memory.png",
            caption="../report/memory.rst",
            category="Memory and throughput",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "memory"},
        ),
        throughput_plot=report(
            f"{RESULTS}/runs/{{run}}/throughput.png",
            caption="../report/throughput.rst",
            category="Memory and throughput",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "throughput"},
        ),
    params:
        config=CONFIGFILE,
        overrides=lambda wildcards: as_overrides(run_overrides(wildcards.run)),
        out=lambda wildcards, output: os.path.dirname(output.memory),
    log:
        f"{LOGS}/profile_memory/{{run}}.log",
    shell:
        "se3t profile --config {params.config:q} {params.overrides} --out {params.out:q} > {log:q} 2>&1"
