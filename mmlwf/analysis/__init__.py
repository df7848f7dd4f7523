"""Analysis of trained models: prediction on a dataset and error metrics."""

from .predict import TrainedModel, energy_force_metrics, load_run, predict

__all__ = ["TrainedModel", "energy_force_metrics", "load_run", "predict"]
