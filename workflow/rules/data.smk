# Data stage: fetch QM9, build the dataset store.  Both commands read the data section from the
# stage's config file; the paths they write are the rules' declared outputs.


rule download_qm9:
    """Fetch the raw QM9 files (qm9pack CSVs, figshare's archive or a local folder) with their
    sha256 checksums; files already there with the right checksum are kept."""
    input:
        config=expand(rules.stage_config.output.config, stage="data"),
    output:
        raw=directory(RAW_DIR),
    log:
        f"{LOGS}/download_qm9.log",
    shell:
        "se3t data fetch --config {input.config:q} --out {output.raw:q} > {log:q} 2>&1"


rule build_dataset:
    """Parse, perceive bonds and write the Zarr dataset store every later stage reads (written
    to a temporary path and renamed when complete)."""
    input:
        config=expand(rules.stage_config.output.config, stage="data"),
        raw=rules.download_qm9.output.raw,
    output:
        dataset=directory(DATASET),
    # data.processes workers perceive bonds; Snakemake may grant fewer (--cores), hence
    # --processes {threads}
    threads: CFG.data.processes
    log:
        f"{LOGS}/build_dataset.log",
    shell:
        "se3t data build --config {input.config:q} --raw {input.raw:q} --out {output.dataset:q}"
        " --processes {threads} > {log:q} 2>&1"
