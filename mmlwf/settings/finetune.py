"""The ``finetune:`` section of a training config (an experiment): a training that starts from a
trained model's parameters instead of random ones (issue 17, :mod:`mmlwf.training.finetune`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import SettingError, Settings


class FinetuneSettings(Settings):
    """Fine-tuning: start from a trained model, optionally freezing parts or resetting heads."""

    init_from: str | None = Field(None, description="the trained model the run starts from: a run directory "
                                  "(its checkpoints/best, the EMA weights when it kept them) or an exported .mmlwf "
                                  "file; in the workflow also the name of another experiment. Its model settings "
                                  "are the run's (a model setting given here must agree); null = random "
                                  "initialisation")
    freeze: list[str] = Field([], description="parts of the model not trained (zero updates, no weight decay, "
                              "EMA equal to them); the parts are the model kind's (PhysNet: embedding, "
                              "interaction (with the atomic residuals), heads, energy_shift_scale, charge_shift_scale, "
                              "dispersion)")
    reset_heads: bool = Field(False, description="re-initialise the output heads (the kind's part 'heads') "
                              "instead of taking the source's")
    align_energy: bool = Field(True, description="on a new run, add to the model's per-element energy shift "
                               "the source's mean error per atom on the target's training data (least squares "
                               "over up to 64 batches of epoch 0), so that data of another level of theory (other "
                               "element and atomisation energies) start without a constant offset; the network is "
                               "kept. Needs a model kind with an energy offset (PhysNet)")
    learning_rate: float = Field(3.0e-4, gt=0, description="peak learning rate of a fine-tuning run (it "
                                 "replaces training.learning_rate when init_from is set): a tenth of the "
                                 "from-scratch default, so that the first updates refine what the source learned "
                                 "rather than undo it")

    @model_validator(mode="after")
    def _needs_source(self) -> FinetuneSettings:
        if self.init_from is None and (self.freeze or self.reset_heads):
            raise SettingError("freeze" if self.freeze else "reset_heads", "needs finetune.init_from (a model to "
                               "start from)")
        return self
