# Reference data -> packed dataset -> integrity report.


rule convert:
    input:
        sources=dataset_sources,
        esp_files=dataset_esp_files,
    output:
        packed=directory("results/datasets/{dataset}/packed"),
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "results/benchmarks/convert/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=dataset_convert_settings,
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
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/validate.py"


# The validation report is an input so that an invalid dataset is never split.
rule split:
    input:
        packed="results/datasets/{dataset}/packed",
        validation="results/datasets/{dataset}/validation.json",
    output:
        split="results/datasets/{dataset}/split.npz",
    log:
        "logs/split/{dataset}.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=dataset_setting("split"),
    script:
        "../scripts/split.py"


# A file of isolated atoms is an input: changing it re-runs the statistics (and the trainings).
rule stats:
    input:
        packed="results/datasets/{dataset}/packed",
        split="results/datasets/{dataset}/split.npz",
        isolated_atoms=dataset_isolated_atoms,
    output:
        stats="results/datasets/{dataset}/stats.json",
    log:
        "logs/stats/{dataset}.log",
    benchmark:
        "results/benchmarks/stats/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        element_energies=dataset_element_energies,
    script:
        "../scripts/stats.py"


# Reference ESP with pyscf; the per-structure cache outside the declared output survives an
# interrupted job, so the re-run resumes.
rule label:
    input:
        sources=label_sources,
    output:
        packed=directory("results/labels/{label}/packed"),
    log:
        "logs/label/{label}.log",
    benchmark:
        "results/benchmarks/label/{label}.tsv"
    conda:
        "../envs/label.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        settings=label_settings,
        cache=lambda wildcards: f"results/labels/{wildcards.label}/cache",
    script:
        "../scripts/label.py"
