"""The report's input pipeline: Keras' `ImageDataGenerator`, made resumable.

`generator_from_files` reads a file list or a class folder with the report's generator and
`EpochSeededIterator` makes its shuffle order and random transforms functions of (seed, epoch,
batch), as the tf.data twin in `bc_keras.data` is.
"""

from __future__ import annotations

import keras
import numpy as np

from bc_keras.data.pipeline import PipelineOptions, check_interpolation, preprocess_function
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.histology.stain import StainAugmentation


class EpochSeededIterator(keras.utils.PyDataset):
    """Wraps a Keras `DirectoryIterator` (flow_from_directory / flow_from_dataframe) so that
    its shuffle order and random transforms are functions of (seed, epoch, batch).

    The legacy iterator seeds NumPy with `seed + total_batches_seen` before each batch; this
    sets that counter from the epoch and batch number, draws each epoch's order from
    (seed, epoch), and reseeds the stain augmentation per batch, so resuming at epoch k
    reproduces the uninterrupted run.
    """

    def __init__(self, iterator, seed: int, shuffle: bool, start_epoch: int = 0, stain=None):
        super().__init__()
        self.iterator, self.seed, self.shuffle = iterator, seed, shuffle
        self.epoch, self.stain = start_epoch, stain
        self._set_order()

    def _set_order(self):
        count = self.iterator.n
        self.iterator.index_array = (
            np.random.default_rng([self.seed, self.epoch]).permutation(count)
            if self.shuffle
            else np.arange(count)
        )

    def __len__(self) -> int:
        return len(self.iterator)

    def __getitem__(self, index):
        self.iterator.total_batches_seen = self.epoch * len(self) + index
        if self.stain is not None:
            self.stain.reseed(self.seed, self.epoch, index)
        return self.iterator[index]

    def on_epoch_end(self):
        self.epoch += 1
        self._set_order()


def generator_from_files(
    paths, labels, options: PipelineOptions, *, directory=None
) -> EpochSeededIterator:
    """The report's pipeline: `ImageDataGenerator` with `flow_from_directory` (when `directory`
    is given and every file in it is readable) or, for an explicit file list,
    `flow_from_dataframe` with the same generator; wrapped in `EpochSeededIterator`."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    check_interpolation(options.interpolation)
    if options.techniques():
        raise ValueError(
            f"{' and '.join(options.techniques())} need the tf.data pipeline: the report's "
            "ImageDataGenerator transforms one image at a time and has no batch mixing; use "
            "--pipeline tfdata"
        )
    function = preprocess_function(options.preprocess)
    transforms = options.augmentation.generator_kwargs() if options.augment else {}
    stain = None
    if options.augment and options.stain_strength > 0:
        # Keras applies preprocessing_function after the affine transform, before rescale.
        stain = StainAugmentation(options.stain_strength, options.seed, then=function)
    rescale = {"rescale": 1.0 / 255.0} if function is None else {}
    generator = ImageDataGenerator(
        preprocessing_function=stain or function, **rescale, **transforms
    )
    flow_options = dict(
        target_size=(options.image_size, options.image_size),
        batch_size=options.batch_size,
        class_mode="binary",
        shuffle=False,  # the wrapper orders each epoch
        seed=options.seed,
        interpolation=options.interpolation,
    )
    if directory is not None:
        iterator = generator.flow_from_directory(
            str(directory), classes=list(CLASS_NAMES), **flow_options
        )
    else:
        import pandas as pd

        frame = pd.DataFrame(
            {"filename": list(paths), "class": [CLASS_NAMES[int(label)] for label in labels]}
        )
        iterator = generator.flow_from_dataframe(
            frame,
            x_col="filename",
            y_col="class",
            classes=list(CLASS_NAMES),
            validate_filenames=False,
            **flow_options,
        )
    return EpochSeededIterator(iterator, options.seed, options.shuffle, options.start_epoch, stain)
