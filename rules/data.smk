# Reference data -> packed dataset -> integrity report.


rule convert:
    input:
        sources=dataset_sources,
        esp_files=dataset_esp_files,
    output:
        packed=directory("results/datasets/{dataset}/packed"),
    params:
        format=dataset_setting("format"),
        energy_unit=dataset_setting("energy_unit"),
        length_unit=dataset_setting("length_unit"),
        dipole_unit=dataset_setting("dipole_unit"),
        key_map=dataset_setting("keys"),
        esp=dataset_esp_settings,
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "results/benchmarks/convert/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
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
    resources:
        mem_mb=1000,
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
    resources:
        mem_mb=1000,
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
    log:
        "logs/stats/{dataset}.log",
    benchmark:
        "results/benchmarks/stats/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/stats.py"


# Reference ESP with pyscf; the per-structure cache outside the declared output survives an
# interrupted job, so the re-run resumes.
rule label:
    input:
        sources=label_sources,
    output:
        packed=directory("results/labels/{label}/packed"),
    params:
        settings=label_settings,
        cache=lambda wildcards: f"results/labels/{wildcards.label}/cache",
    log:
        "logs/label/{label}.log",
    benchmark:
        "results/benchmarks/label/{label}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../envs/label.yaml"
    script:
        "../scripts/label.py"
