# Stage 1: one virtual environment per engine install (package, version, extras), shared by all
# cells and by every engine entry that installs the same thing.


localrules:
    install_engine,


rule install_engine:
    output:
        installed=f"{ENGINES_DIR}/{{env}}/installed.json",
    log:
        "results/logs/install_engine/{env}.log",
    params:
        engine=lambda wc: ENVS[wc.env],
        engine_cfg=lambda wc: engine_cfg(ENVS[wc.env]),
    script:
        "../scripts/install_engine.py"
