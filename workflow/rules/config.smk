# Config files: what every command takes with --config.  A run's file holds its whole resolved
# config (the workflow's config, the run's overrides, run.dir, run.name, basis.manifest); a
# shared stage's file holds only the sections it reads.  Each is rewritten only when its content
# changes (params.settings), so a change reruns exactly the stages that read it.


localrules:
    run_config,
    stage_config,


rule run_config:
    """The resolved config of one run of `workflow.runs`."""
    output:
        config=run_config("{run}"),
    params:
        settings=lambda wildcards: config_settings(to_dict(RUNS[wildcards.run])),
    log:
        f"{LOGS}/run_config/{{run}}.log",
    run:
        save(RUNS[wildcards.run], output.config)
        write_text(log[0], f"wrote {output.config}\n")


rule stage_config:
    """The config sections that a shared stage reads (data; data and basis)."""
    output:
        config=f"{CONFIG_DIR}/{{stage}}.yaml",
    wildcard_constraints:
        stage="data|basis",
    params:
        settings=lambda wildcards: config_settings(stage_sections(wildcards.stage)),
    log:
        f"{LOGS}/stage_config/{{stage}}.log",
    run:
        write_text(output.config, yaml.safe_dump(stage_sections(wildcards.stage), sort_keys=False))
        write_text(log[0], f"wrote {output.config}\n")
