"""The ``training:`` section: one declaration per setting."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Settings, SettingError

OPTIMIZERS = ("adam", "adamw", "amsgrad", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "exponential", "plateau")
#: how the energy error enters the loss: divided by 1, by the square root of the atom count, by the count
ENERGY_LOSSES = ("per_molecule", "per_sqrt_atom", "per_atom")
DATA_PARALLEL = ("auto", "off")


class TrainingSettings(Settings):
    """Training settings: optimiser, schedule, loss weights, length and stopping, devices."""

    # -- data
    batch_atoms: int | None = Field(88, ge=2, description="atoms per batch, padding included (the loader's atom "
                                    "budget; a batch holds as many molecules as fit); null = batch_size molecules")
    batch_size: int | None = Field(None, ge=1, description="molecules per batch on average, instead of "
                                   "batch_atoms: setting it alone sets batch_atoms to null")
    seed: int = Field(0, description="seed of parameter initialisation and of the data order (with the epoch)")
    # -- optimiser
    optimizer: Literal[OPTIMIZERS] = Field("adam", description="the optimiser")
    learning_rate: float = Field(3.0e-3, gt=0, description="peak learning rate")
    adam_b1: float = Field(0.9, ge=0, lt=1, description="Adam-family first-moment decay")
    adam_b2: float = Field(0.999, ge=0, lt=1, description="Adam-family second-moment decay")
    adam_eps: float = Field(1.0e-8, gt=0, description="Adam-family epsilon")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd momentum; 0 = plain gradient descent")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (AdamW); only with optimizer adamw")
    clip_norm: float | None = Field(None, gt=0, description="clip the (accumulated) gradient to this global norm; "
                                                            "null = off")
    accumulate: int = Field(1, ge=1, description="average the gradients of this many batches per update "
                                                 "(gradient accumulation)")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="decay of the exponential moving average of the "
                             "parameters; 0 = off; the EMA parameters are used for validation and export")
    # -- schedule (counted in optimiser updates, not batches, when accumulating)
    schedule: Literal[SCHEDULES] = Field("warmup_cosine", description="the learning-rate schedule; warmup_cosine and "
                                         "warmup_linear decay from learning_rate to min_learning_rate over a span "
                                         "of updates fixed when the run starts and kept in its checkpoints "
                                         "(see decay_steps)")
    warmup_steps: int = Field(300, ge=0, description="linear warm-up over this many updates (every schedule); 0 = none")
    decay_steps: int | None = Field(None, ge=1, description="warmup_cosine, warmup_linear: updates to reach "
                                    "min_learning_rate (null: all updates of max_epochs, or with max_time_min "
                                    "those that fit the time budget: measured over the first epochs, then the "
                                    "run ends with the decay); exponential: updates per decay_rate factor "
                                    "(null: one epoch)")
    decay_rate: float = Field(0.95, gt=0, le=1, description="exponential: factor per decay_steps updates")
    min_learning_rate: float = Field(1.0e-6, ge=0, description="floor of every schedule (cosine end value); "
                                                               "at most learning_rate")
    plateau_patience: int = Field(10, ge=1, description="plateau: validations without improvement before the "
                                                        "rate is cut")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: factor applied to the rate at each cut")
    plateau_threshold: float = Field(1.0e-4, ge=0, description="plateau: relative improvement that counts as one")
    # -- loss
    energy_weight: float = Field(1.0, ge=0, description="weight of the energy MSE (eV^2)")
    forces_weight: float = Field(50.0, ge=0, description="weight of the force MSE ((eV/A)^2, per component)")
    dipole_weight: float = Field(25.0, ge=0, description="weight of the dipole MSE ((e*A)^2); used when data "
                                                         "and model have one")
    charge_weight: float = Field(10.0, ge=0, description="weight of the total-charge MSE (e^2); used when the "
                                                         "model predicts charges")
    mono_weight: float = Field(0.0, ge=0, description="weight of the atomic-charge MSE (e^2) against per-atom q "
                               "of the data (DCMNet: atomic monopoles); used when data and model have them")
    esp_weight: float = Field(1.0, ge=0, description="weight of the electrostatic-potential MSE (V^2, DCMNet); "
                                                     "used when data and model have an ESP")
    esp_decay_length: float | None = Field(None, gt=0, description="DCMNet ESP loss weighting toward points near "
                                           "the molecule: each point weighs exp(-d / esp_decay_length), d its "
                                           "distance (A) to the nearest atom, loss = sum w dV^2 / sum w; "
                                           "null = uniform")
    nh_weight: float = Field(0.01, ge=0, description="weight of PhysNet's non-hierarchicality penalty (the "
                             "original's nhlambda, 0.01): the mean over atoms and outputs of o_t^2 / (o_t^2 + "
                             "o_t-1^2) summed over modules t > 0, o_t a module's atomic energy (and charge) "
                             "contribution; used when the model gives one (PhysNet with num_iterations > 1)")
    energy_loss: Literal[ENERGY_LOSSES] = Field("per_molecule", description="the energy error in the loss: "
                                                "per_molecule as it is; per_sqrt_atom divided by the square root "
                                                "of the atom count (its square by the count, as apax); per_atom "
                                                "divided by the count")
    # -- length and stopping
    max_epochs: int = Field(1000, ge=1, description="epochs to train")
    max_time_min: float | None = Field(None, gt=0, description="stop (with a resumable checkpoint) after this "
                                       "many minutes of this invocation; null = no limit; with warmup_cosine or "
                                       "warmup_linear and decay_steps null the decay is sized to this budget "
                                       "when the run starts")
    early_stopping_patience: int | None = Field(100, ge=1, description="stop after this many epochs without a "
                                                "better validation loss; null = off")
    # -- bookkeeping
    checkpoint_every: int = Field(1, ge=1, description="write the 'latest' checkpoint every this many epochs "
                                  "(and at the end, at the time limit and on SIGTERM)")
    checkpoint_interval_min: float = Field(1.0, ge=0, description="at least this many minutes between two "
                                           "'latest' checkpoints of checkpoint_every (the first epoch of an "
                                           "invocation, the epoch a time budget's schedule is sized, the end, the "
                                           "time limit and SIGTERM always write one); the "
                                           "'best' one is written with the next 'latest'; 0 = every checkpoint_every "
                                           "epochs")
    valid_every: int = Field(1, ge=1, description="validate every this many epochs (and after the last)")
    tensorboard: bool = Field(True, description="also write every history.csv row as TensorBoard scalars to "
                              "<run>/tensorboard, per epoch (watch a run with tensorboard --logdir results/runs); "
                              "false: none")
    # -- devices
    data_parallel: Literal[DATA_PARALLEL] = Field("auto", description="with auto and n > 1 local "
                                                  "devices (jax.local_devices()) each step takes n consecutive "
                                                  "batches of one shape, one per device, and the loss is that of "
                                                  "one batch holding all their molecules (steps, accumulate and "
                                                  "the schedule count these n-batch steps); off = one device")

    @model_validator(mode="before")
    @classmethod
    def _batch_by_molecules(cls, values: Any) -> Any:
        """``batch_size`` given without ``batch_atoms`` (a config, or a run's stored config, from
        before ``batch_atoms`` existed) batches by molecules."""
        if isinstance(values, dict) and values.get("batch_size") is not None and "batch_atoms" not in values:
            return {**values, "batch_atoms": None}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSettings:
        if (self.batch_atoms is None) == (self.batch_size is None):
            raise SettingError("batch_atoms", "and batch_size are both set: give one (null the other)"
                               if self.batch_size is not None else "and batch_size are both null: give one")
        if self.weight_decay and self.optimizer != "adamw":
            raise SettingError("weight_decay", f"is decoupled weight decay and needs optimizer adamw "
                                               f"(optimizer is {self.optimizer}), got {self.weight_decay:g}")
        if self.min_learning_rate > self.learning_rate:
            raise SettingError("min_learning_rate", f"must be at most learning_rate ({self.learning_rate:g}), "
                                                    f"got {self.min_learning_rate:g}")
        return self
