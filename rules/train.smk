# Training: one run directory per experiment (DESIGN §10).


# Only history.csv and model.json are declared outputs: the checkpoints/ of a killed job stay
# behind (Snakemake removes the incomplete outputs), so the re-run resumes from them.
rule train:
    input:
        unpack(experiment_data),
    output:
        history="results/runs/{experiment}/history.csv",
        model="results/runs/{experiment}/model.json",
    params:
        config=experiment_training_config,
        weights=experiment_weights,
        run_dir=lambda wildcards: f"results/runs/{wildcards.experiment}",
    log:
        "logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    threads: experiment_threads
    resources:
        gpu=experiment_gpus,
        mem_mb=4000,
    conda:
        experiment_env
    script:
        "../scripts/train.py"
