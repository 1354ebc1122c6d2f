"""bc_keras: BreaKHis benign-vs-malignant classification with Keras 3 (CNN, transfer, SimCLR)."""

__version__ = "0.1.0"
