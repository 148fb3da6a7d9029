# Report stage (issue 7's `se3t report`): one self-contained HTML file and its Markdown twin.


localrules:
    report,


rule report:
    """Tables and plots of every run: config, learning curves, metrics beside the published
    references, parity, memory and throughput."""
    input:
        metrics=expand(f"{RESULTS}/runs/{{run}}/metrics.json", run=RUNS),
        memory=expand(f"{RESULTS}/runs/{{run}}/memory.json", run=RUNS)
        if CFG.workflow.profile_memory
        else [],
    output:
        html=report(REPORT_HTML, caption="../report/report.rst", category="Report"),
        markdown=REPORT_MD,
    params:
        results=lambda wildcards, output: os.path.dirname(output.html) or ".",
    log:
        f"{LOGS}/report.log",
    shell:
        "se3t report {params.results:q} --out {output.html:q} > {log:q} 2>&1"
