# Demo data that needs no download: labelled conformers, and the teacher's isolated atoms of
# their elements (the demo dataset's element reference energies, stats.element_energies).


rule demo_data:
    output:
        extxyz="results/demo/{name}.extxyz",
        isolated_atoms="results/demo/isolated_atoms/{name}.extxyz",
    log:
        "logs/demo_data/{name}.log",
    conda:
        "../envs/label.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        settings=config["demo"],  # molecules, n_per_molecule, seed, temperature_K, teacher, ...
    script:
        "../scripts/demo_data.py"
