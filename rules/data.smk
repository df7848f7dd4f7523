# Reference data -> packed dataset -> integrity report.


rule convert:
    input:
        sources=dataset_sources,
    output:
        packed=directory("results/datasets/{dataset}/packed"),
    params:
        format=dataset_setting("format"),
        energy_unit=dataset_setting("energy_unit"),
        length_unit=dataset_setting("length_unit"),
        dipole_unit=dataset_setting("dipole_unit"),
        key_map=dataset_setting("keys"),
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "results/benchmarks/convert/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/convert.py"


# A dataset with errors stops the workflow here (the message is in the log and on stderr);
# validation.json is written only for a valid dataset.
rule validate:
    input:
        packed="results/datasets/{dataset}/packed",
    output:
        report="results/datasets/{dataset}/validation.json",
    log:
        "logs/validate/{dataset}.log",
    threads: 1
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/validate.py"


# The validation report is an input so that an invalid dataset is never split.
rule split:
    input:
        packed="results/datasets/{dataset}/packed",
        validation="results/datasets/{dataset}/validation.json",
    output:
        split="results/datasets/{dataset}/split.npz",
    params:
        settings=dataset_setting("split"),
    log:
        "logs/split/{dataset}.log",
    threads: 1
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/split.py"


rule stats:
    input:
        packed="results/datasets/{dataset}/packed",
        split="results/datasets/{dataset}/split.npz",
    output:
        stats="results/datasets/{dataset}/stats.json",
    params:
        settings=dataset_setting("stats"),
    log:
        "logs/stats/{dataset}.log",
    benchmark:
        "results/benchmarks/stats/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/stats.py"
