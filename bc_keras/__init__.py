"""bc_keras: BreaKHis benign-vs-malignant classification with Keras 3 (CNN, transfer, SimCLR).

The Python API (importing bc_keras imports no TensorFlow; each name loads on first use):

    import bc_keras
    config = bc_keras.CNNConfig(data="data/patient", recipe="robust", epochs=20)
    result = bc_keras.train(config)          # run folder, model file, metrics, model
    predictor = bc_keras.load_model(result.model_path)
    predictor.predict_proba("some_images/")  # files, folders or uint8 RGB arrays
"""

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "train": ("bc_keras.experiments", "run"),
    "RunResult": ("bc_keras.experiments", "RunResult"),
    "load_model": ("bc_keras.evaluation.predictor", "load_model"),
    "Predictor": ("bc_keras.evaluation.predictor", "Predictor"),
    **{
        name: ("bc_keras.config", name)
        for name in ("CNNConfig", "TransferConfig", "PretrainConfig", "LinearConfig", "FinetuneConfig")
    },
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'bc_keras' has no attribute {name!r}")
    import importlib

    module, attribute = _API[name]
    return getattr(importlib.import_module(module), attribute)
