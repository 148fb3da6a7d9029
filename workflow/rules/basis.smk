# Basis stage: the per-edge equivariant bases, precomputed into the shared cache by N parallel
# shard jobs, then finalized; the workflow tracks a small manifest that points at the store.


rule precompute_basis:
    """Compute one contiguous slice of the store's chunks (`--shard I/N`); finished chunks of an
    earlier, interrupted run are kept, and a store another workflow completed is reused."""
    input:
        config=expand(rules.stage_config.output.config, stage="basis"),
        dataset=rules.build_dataset.output.dataset,
    output:
        receipt=f"{BASIS_DIR}/shards/{{shard}}-of-{BASIS_SHARDS}.json",
    params:
        shards=BASIS_SHARDS,
    log:
        f"{LOGS}/precompute_basis/{{shard}}-of-{BASIS_SHARDS}.log",
    shell:
        "se3t basis precompute --config {input.config:q} --dataset {input.dataset:q}"
        " --shard {wildcards.shard}/{params.shards} --receipt {output.receipt:q}"
        " > {log:q} 2>&1"


rule finalize_basis:
    """Check every chunk, write checksums, mark the store complete and read-only, and write the
    run folder's manifest pointing at it."""
    input:
        config=expand(rules.stage_config.output.config, stage="basis"),
        receipts=expand(rules.precompute_basis.output.receipt, shard=range(BASIS_SHARDS)),
    output:
        manifest=BASIS_MANIFEST,
    params:
        key=lambda wildcards, input: basis_key(input.receipts),
    log:
        f"{LOGS}/finalize_basis.log",
    shell:
        "se3t basis finalize {params.key:q} --config {input.config:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"
