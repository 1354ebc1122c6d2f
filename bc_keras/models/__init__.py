"""Models: the classifier head and compile, the baseline CNN, ResNet-18, transfer backbones, the
SimCLR trainer, and saving with the .h5 metadata."""

from bc_keras.models.saving import (  # noqa: F401
    METADATA_ATTRIBUTE,
    OUTPUT_NAME,
    model_scope,
    sigmoid_output,
    build_baseline_cnn,
    classifier_metrics,
    compile_classifier,
    check_model_out,
    check_finite_weights,
    float32_copy,
    save_model,
    read_metadata,
    load_model,
)
