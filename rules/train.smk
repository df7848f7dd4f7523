# Training: one run directory per experiment.


# Only history.csv and model.json are declared outputs: the checkpoints/ of a killed job stay
# behind (Snakemake removes the incomplete outputs), so the re-run resumes from them.
rule train:
    input:
        unpack(experiment_data),
    output:
        history="results/runs/{experiment}/history.csv",
        model="results/runs/{experiment}/model.json",
    log:
        "logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    conda:
        experiment_env
    threads: experiment_threads
    resources:
        gpu=experiment_gpus,
        mem_mb=4000,
    params:
        config=experiment_training_config,
        weights=experiment_weights,
        run_dir=lambda wildcards: f"results/runs/{wildcards.experiment}",
    script:
        "../scripts/train.py"
