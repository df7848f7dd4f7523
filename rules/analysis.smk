# Evaluation of each run on its dataset's held-out split, its plots, and the report.


rule evaluate:
    input:
        unpack(experiment_data),
        history="results/runs/{experiment}/history.csv",
        model="results/runs/{experiment}/model.json",
    output:
        metrics="results/runs/{experiment}/metrics.json",
        predictions="results/runs/{experiment}/predictions.csv",
        atoms="results/runs/{experiment}/predictions_atoms.npz",
        plots=report(
            directory("results/runs/{experiment}/plots"),
            patterns=["{plot}.png"],
            caption="../report/plot.rst",
            category="Experiments",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "plot": "{plot}"},
        ),
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}.tsv"
    conda:
        experiment_env
    threads: 2
    resources:
        gpu=experiment_gpus,
        mem_mb=4000,
    params:
        run_dir=lambda wildcards: f"results/runs/{wildcards.experiment}",
        subset=evaluation_setting("subset"),
        checkpoint=evaluation_setting("checkpoint"),
    script:
        "../scripts/evaluate.py"


rule report:
    input:
        metrics=all_run_files("metrics.json"),
        plots=all_run_files("plots"),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="Report",
            labels={"file": "mmlwf report (self-contained HTML)"},
        ),
        table=report(
            "results/report/comparison.csv",
            caption="../report/comparison.rst",
            category="Report",
            labels={"file": "comparison of the experiments (CSV)"},
        ),
    log:
        "logs/report/report.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        run_dirs=[f"results/runs/{experiment}" for experiment in config["experiments"]],
    script:
        "../scripts/report.py"
