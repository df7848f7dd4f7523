# mmlwf: reference data -> packed datasets -> trained force fields -> report.
# Run the demo with `snakemake --cores 2` (or `--profile profiles/default`);
# add `--sdm conda` to run every step in its environment from envs/.

from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


report: "report/workflow.rst"


# checks the config against schemas/config.schema.yaml (filling in its defaults) and more,
# stopping with one line before any job if it is wrong
include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"


rule all:
    default_target: True
    input:
        expand("results/datasets/{dataset}/stats.json", dataset=config["datasets"]),
        expand(
            "results/runs/{experiment}/metrics.json", experiment=config["experiments"]
        ),
        ["results/report/index.html"] if config["experiments"] else [],
    localrule: True
