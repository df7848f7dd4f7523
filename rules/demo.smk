# Demo data that needs no download.


rule demo_data:
    output:
        extxyz="results/demo/{name}.extxyz",
    params:
        settings=config["demo"],  # molecules, n_per_molecule, seed, temperature_K, teacher, ...
    log:
        "logs/demo_data/{name}.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/label.yaml"
    script:
        "../scripts/demo_data.py"
