# Evaluation stage: test metrics of the trained model, and the memory/throughput profile.


rule evaluate:
    """MAE and RMSE per target on the test split, predictions, parity plot, error histogram."""
    input:
        trained=rules.train.output.done,
        dataset=rules.build_dataset.output.dataset,
    output:
        metrics=f"{run_dir('{run}')}/metrics.json",
        predictions=f"{run_dir('{run}')}/predictions.csv",
        parity=report(
            f"{run_dir('{run}')}/parity.png",
            caption="../report/parity.rst",
            category="Accuracy",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "parity"},
        ),
        errors=report(
            f"{run_dir('{run}')}/errors.png",
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
    """Memory and molecules/s per batch size, precision and fusion, each point a few training
    steps in a fresh process, with the run's model on real molecules of the dataset.  Needs no
    trained weights, so it runs beside training."""
    input:
        config=rules.run_config.output.config,
        dataset=rules.build_dataset.output.dataset,
    output:
        memory=f"{run_dir('{run}')}/memory.json",
        memory_plot=report(
            f"{run_dir('{run}')}/memory.png",
            caption="../report/memory.rst",
            category="Memory and throughput",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "memory"},
        ),
        throughput_plot=report(
            f"{run_dir('{run}')}/throughput.png",
            caption="../report/throughput.rst",
            category="Memory and throughput",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "throughput"},
        ),
    params:
        out=lambda wildcards, output: os.path.dirname(output.memory),
    log:
        f"{LOGS}/profile_memory/{{run}}.log",
    shell:
        "se3t profile --config {input.config:q} --out {params.out:q} > {log:q} 2>&1"
