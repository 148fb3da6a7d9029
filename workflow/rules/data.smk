# Data stage: fetch the raw input (QM9 or your own molecules), build the dataset store.  Both commands read the data section from the
# stage's config file; the paths they write are the rules' declared outputs.


rule fetch_raw:
    """Put the raw input of data.source into one folder with every file's sha256 (QM9: qm9pack's
    CSVs, figshare's archive or a local folder; your own molecules: a copy of the SDF, extended
    XYZ, SMILES CSV or XYZ folder); files already there with the right checksum are kept."""
    input:
        config=expand(rules.stage_config.output.config, stage="data"),
    output:
        raw=directory(RAW_DIR),
    log:
        f"{LOGS}/fetch_raw.log",
    shell:
        "se3t data fetch --config {input.config:q} --out {output.raw:q} > {log:q} 2>&1"


rule build_dataset:
    """Parse, perceive bonds and write the Zarr dataset store every later stage reads (written
    to a temporary path and renamed when complete)."""
    input:
        config=expand(rules.stage_config.output.config, stage="data"),
        raw=rules.fetch_raw.output.raw,
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
