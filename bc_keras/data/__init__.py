"""Input pipelines: file listing, the tf.data pipeline, the report's ImageDataGenerator, TFRecord
shards, decoding and augmentation, behind one dispatcher (`build_dataset`)."""

from bc_keras.data.dispatch import (  # noqa: F401
    build_dataset,
    list_split_files,
)
from bc_keras.data.files import (  # noqa: F401
    CLASS_NAMES,
    IMAGE_EXTENSIONS,
    SUBSET_TEST,
    SUBSET_TRAIN,
    SUBSET_VAL,
    SUBSETS,
    ImageDataset,
    SplitFiles,
    check_images,
    describe_problems,
    list_folder_files,
)
from bc_keras.data.pipeline import (  # noqa: F401
    DEFAULT_INTERPOLATION,
    ENDLESS,
    INTERPOLATIONS,
    NO_PREPROCESS_MODELS,
    PIPELINE_GENERATOR,
    PIPELINE_TFDATA,
    PIPELINES,
    PREPROCESS_RESCALE,
    REPORT_AUGMENTATION,
    AffineAugmentation,
    PipelineOptions,
    SimCLRAugmentation,
    apply_preprocess,
    check_interpolation,
    decode_and_resize,
    decoded_dataset,
    epochs_from_decoded,
    files_dataset,
    preprocess_function,
    random_affine_warp,
    random_hed_perturbation,
    simclr_dataset_from_files,
    simclr_pair,
    simclr_views,
    technique_options,
    tfdata_from_files,
)
