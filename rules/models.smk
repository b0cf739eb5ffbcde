# Stage 2: the model on local disk, in every format its engines load.


localrules:
    prepare_model,


rule prepare_model:
    input:
        unpack(get_prepare_inputs),
    output:
        ready="results/models/{model}/ready.json",
    log:
        "results/logs/prepare_model/{model}.log",
    params:
        model_cfg=lambda wc: without_resources(config["models"][wc.model]),
        needs=lambda wc: model_needs(wc.model, config, CELLS.values()),
    script:
        "../scripts/prepare_model.py"
