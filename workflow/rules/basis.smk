# Basis stage: the per-edge equivariant bases, precomputed into the shared cache by N parallel
# shard jobs, then finalized; the workflow tracks a small manifest that points at the store
# (issue 4's `se3t basis precompute|finalize`).


rule precompute_basis:
    """Compute one contiguous slice of the store's chunks (`--shard I/N`); finished chunks of an
    earlier, interrupted run are kept, and a store another workflow completed is reused."""
    input:
        dataset=DATASET,
    output:
        receipt=f"{BASIS_DIR}/shards/{{shard}}-of-{BASIS_SHARDS}.json",
    params:
        config=CONFIGFILE,
        cache=CFG.basis.cache,
        shards=BASIS_SHARDS,
        overrides=section_overrides("basis"),
        settings=section_settings("basis"),
    log:
        f"{LOGS}/precompute_basis/{{shard}}-of-{BASIS_SHARDS}.log",
    shell:
        "se3t basis precompute --config {params.config:q} --dataset {input.dataset:q}"
        " --cache {params.cache:q}"
        " --shard {wildcards.shard}/{params.shards} --receipt {output.receipt:q}"
        " {params.overrides} > {log:q} 2>&1"


rule finalize_basis:
    """Check every chunk, write checksums, mark the store complete and read-only, and write the
    run folder's manifest pointing at it."""
    input:
        receipts=expand(
            f"{BASIS_DIR}/shards/{{shard}}-of-{BASIS_SHARDS}.json", shard=range(BASIS_SHARDS)
        ),
    output:
        manifest=BASIS_MANIFEST,
    params:
        key=lambda wildcards, input: basis_key(input.receipts),
        config=CONFIGFILE,
        cache=CFG.basis.cache,
        overrides=section_overrides("basis"),
    log:
        f"{LOGS}/finalize_basis.log",
    shell:
        "se3t basis finalize {params.key:q} {params.overrides} --config {params.config:q}"
        " --cache {params.cache:q} --manifest {output.manifest:q} > {log:q} 2>&1"
