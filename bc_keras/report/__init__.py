"""The report regenerated from run folders (`python -m bc_keras.report`): the document, claims,
figures, runs, evaluation sets, tables, the comparison table and the analysis sections."""

_SUBMODULES = {
    "analyses", "batchsize", "claims", "compare", "document", "encoders", "figures", "forest",
    "panels", "paths", "runs", "sets", "significance", "sslclaims", "tables", "validation",
}  # fmt: skip


def __getattr__(name: str):
    # Light on import (compare and the tables need no TensorFlow): the document's names
    # (build_report, main, ...) are looked up on first use.
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bc_keras.report import document

    return getattr(document, name)
