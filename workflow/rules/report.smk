# Report stage: one self-contained HTML file and its Markdown twin, of exactly the runs that
# `workflow.runs` lists (a run folder left from an earlier config is not reported).


localrules:
    report,


rule report:
    """Tables and plots of every run: config, learning curves, metrics beside the published
    references, parity, memory and throughput."""
    input:
        metrics=expand(rules.evaluate.output.metrics, run=RUNS),
        memory=expand(rules.profile_memory.output.memory, run=RUNS)
        if CFG.workflow.profile_memory
        else [],
    output:
        html=report(REPORT_HTML, caption="../report/report.rst", category="Report"),
        markdown=REPORT_MD,
    params:
        results=lambda wildcards, output: os.path.dirname(output.html) or ".",
        runs=[run_dir(run) for run in RUNS],
    log:
        f"{LOGS}/report.log",
    shell:
        "se3t report {params.results:q} --runs {params.runs:q} --out {output.html:q}"
        " > {log:q} 2>&1"
