"""Models: the classifier head and compile, the baseline CNN, ResNet-18, transfer backbones, the
SimCLR trainer, and saving with the .h5 metadata."""

from bc_keras.models.classifier import (  # noqa: F401
    OUTPUT_NAME,
    classifier_metrics,
    compile_classifier,
    sigmoid_output,
)
from bc_keras.models.cnn import (  # noqa: F401
    build_baseline_cnn,
)
from bc_keras.models.saving import (  # noqa: F401
    CODE_LAYERS,
    METADATA_ATTRIBUTE,
    check_finite_weights,
    check_model_file,
    check_model_out,
    float32_copy,
    load_model,
    nonfinite_weights,
    read_metadata,
    save_model,
)
from bc_keras.models.scope import (  # noqa: F401
    model_scope,
)
