"""The settings of `python -m bc_keras.bench`: the models it measures and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from bc_keras import backbones
from bc_keras.config.options import MODEL_CNN, MODEL_RESNET18
from bc_keras.errors import ConfigError

# The models `python -m bc_keras.bench` measures: the CNN, every registered backbone, and
# SimCLR's ResNet-18.
BENCH_MODELS = (MODEL_CNN, *backbones.BACKBONES, MODEL_RESNET18)
# The first batches of every timed fit are left out of its rate: they trace the step (once) and
# start the input pipeline's threads and buffers.
WARMUP_STEPS = 2


@dataclass(frozen=True)
class BenchSettings:
    """What a train, infer or simclr benchmark measures: the model, sizes and precision."""

    model: str = MODEL_CNN
    image_size: int = 224
    batch_size: int = 32
    steps: int = 12
    repeats: int = 3
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 42

    def check(self) -> None:
        """Raises ConfigError for settings no benchmark can run with."""
        if self.model not in BENCH_MODELS:
            raise ConfigError(
                f"unknown --model {self.model!r}; choose one of {', '.join(BENCH_MODELS)}"
            )
        if self.image_size < (smallest := 8 if self.model == MODEL_CNN else 32):
            raise ConfigError(f"--image-size must be at least {smallest} for {self.model}")
        if self.batch_size < 1 or self.repeats < 1:
            raise ConfigError("--batch-size and --repeats must be positive")
        if self.steps <= WARMUP_STEPS:
            raise ConfigError(
                f"--steps {self.steps} leaves nothing to time: the first {WARMUP_STEPS} steps of "
                f"every pass are warm-up; use --steps {WARMUP_STEPS + 1} or more"
            )
