# Data stage: fetch QM9, build the dataset store (issue 2's `se3t data fetch|build`).  Both read
# the `data` section from the config file; the paths come from here.


rule download_qm9:
    """Fetch the raw QM9 files (qm9pack CSVs, figshare's archive or a local folder) with their
    sha256 checksums; files already there with the right checksum are kept."""
    output:
        raw=directory(RAW_DIR),
    params:
        config=CONFIGFILE,
        overrides=section_overrides("data"),
        settings=section_settings("data"),
    log:
        f"{LOGS}/download_qm9.log",
    shell:
        "se3t data fetch --config {params.config:q} --out {output.raw:q} {params.overrides}"
        " > {log:q} 2>&1"


rule build_dataset:
    """Parse, perceive bonds and write the Zarr dataset store every later stage reads (written
    to a temporary path and renamed when complete)."""
    input:
        raw=rules.download_qm9.output.raw,
    output:
        dataset=directory(DATASET),
    params:
        config=CONFIGFILE,
        overrides=section_overrides("data"),
        settings=section_settings("data"),
    threads: 2
    log:
        f"{LOGS}/build_dataset.log",
    shell:
        "se3t data build --config {params.config:q} --raw {input.raw:q} --out {output.dataset:q}"
        " --processes {threads} {params.overrides} > {log:q} 2>&1"
