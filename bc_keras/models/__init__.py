"""Models: the classifier head and compile, the baseline CNN, ResNet-18, transfer backbones, the
SimCLR trainer, and saving with the .h5 metadata."""

from bc_keras.models.saving import (  # noqa: F401
    METADATA_ATTRIBUTE,
    OUTPUT_NAME,
    build_baseline_cnn,
    check_finite_weights,
    check_model_out,
    classifier_metrics,
    compile_classifier,
    float32_copy,
    load_model,
    model_scope,
    read_metadata,
    save_model,
    sigmoid_output,
)
