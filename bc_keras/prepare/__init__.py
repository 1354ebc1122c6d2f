"""Preparing BreaKHis for training, without TensorFlow: index a tree or archive, split it
(patient, image, official fold), and write train/val/test folders with a split.csv manifest.

`index` finds and checks the images, `split` assigns them to splits, `manifest` reads and
writes split.csv and summarises prepared folders, `layout` writes a prepared folder safely.
"""

from bc_keras.prepare.index import (
    ImageRecord,
    IndexResult,
    filter_magnifications,
    find_breast_root,
    index_archive,
    index_source,
    index_tree,
    is_archive,
    parse_magnifications,
)
from bc_keras.prepare.layout import PrepareResult, check_output_folder, prepare_split
from bc_keras.prepare.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    SETTINGS_NAME,
    load_prepared,
    manifest_path_of,
    patient_overlap,
    read_manifest,
    record_dict,
    split_summary,
    stats_report,
    write_manifest,
)
from bc_keras.prepare.split import (
    DEFAULT_RATIOS,
    DEFAULT_SEED,
    DEFAULT_TRIALS,
    SPLIT_FOLD,
    SPLIT_IMAGE,
    SPLIT_MODES,
    SPLIT_NAMES,
    SPLIT_PATIENT,
    FoldReport,
    read_fold_file,
    split_by_fold,
    split_by_image,
    split_by_patient,
    validate_ratios,
)

__all__ = [
    "DEFAULT_RATIOS",
    "DEFAULT_SEED",
    "DEFAULT_TRIALS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "SETTINGS_NAME",
    "SPLIT_FOLD",
    "SPLIT_IMAGE",
    "SPLIT_MODES",
    "SPLIT_NAMES",
    "SPLIT_PATIENT",
    "FoldReport",
    "ImageRecord",
    "IndexResult",
    "PrepareResult",
    "check_output_folder",
    "filter_magnifications",
    "find_breast_root",
    "index_archive",
    "index_source",
    "index_tree",
    "is_archive",
    "load_prepared",
    "manifest_path_of",
    "parse_magnifications",
    "patient_overlap",
    "prepare_split",
    "read_fold_file",
    "read_manifest",
    "record_dict",
    "split_by_fold",
    "split_by_image",
    "split_by_patient",
    "split_summary",
    "stats_report",
    "validate_ratios",
    "write_manifest",
]
