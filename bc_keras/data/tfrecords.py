"""Sharded TFRecords of a prepared split: writing them, and reading them as the folder pipeline.

A TFRecord folder holds, per subset, shards `train-00000-of-00004.tfrecord ...` whose
`tf.train.Example`s keep each image's original encoded bytes (so decoding gives the pixels the
file gives), plus `tfrecords.json` (what every subset holds, in the folder pipeline's order),
and copies of split.csv and prepare.json. Image k of a subset (benign then malignant, sorted
names) is record k // n of shard k % n, so reading the n shards round-robin in parallel
yields the folder pipeline's order exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from functools import reduce
from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras.config import PIPELINE_TFDATA
from bc_keras.data.decode import decode_bytes_and_resize
from bc_keras.data.files import SUBSET_TRAIN, SUBSETS, SplitFiles
from bc_keras.data.pipeline import check_interpolation, decoded_dataset, epochs_from_decoded
from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES, UNKNOWN, try_parse_filename
from bc_keras.histology.images import IMAGE_EXTENSIONS, check_bytes, check_images, describe_problems
from bc_keras.prepare.manifest import MANIFEST_NAME

INDEX_NAME = "tfrecords.json"
FORMAT_NAME = "bc_keras-tfrecords"
FORMAT_VERSION = 1
SHARD_SUFFIX = ".tfrecord"
EXPORT_TOOL = "data_tools/export_tfrecords.py SPLIT_DIR --out DIR"

# The features of every tf.train.Example.
KEY_IMAGE = "image/encoded"  # the original file's bytes
KEY_FORMAT = "image/format"  # "png", "jpeg", ... (lower case)
KEY_FILENAME = "image/filename"  # relative to its class folder, e.g. SOB_B_A-14-22549AB-40-001.png
KEY_LABEL = "image/class/label"  # 0 benign, 1 malignant
KEY_CLASS = "image/class/text"  # "benign" or "malignant"
KEY_PATIENT = "image/patient"  # from split.csv ("unknown" if the name is not BreaKHis')
KEY_MAGNIFICATION = "image/magnification"  # 40, 100, 200, 400 (0 if unknown)
KEY_SUBTYPE = "image/subtype"
KEY_INDEX = "image/index"  # position in the subset's order (see the module docstring)
FEATURE_DESCRIPTIONS = {
    KEY_IMAGE: "bytes: the image file's original encoded bytes",
    KEY_FORMAT: "bytes: the encoding, lower case (png, jpeg, ...)",
    KEY_FILENAME: "bytes: the file name within its class folder",
    KEY_LABEL: "int64: 0 benign, 1 malignant",
    KEY_CLASS: "bytes: benign or malignant",
    KEY_PATIENT: f"bytes: the patient from split.csv ({UNKNOWN} if not known)",
    KEY_MAGNIFICATION: "int64: 40, 100, 200 or 400 (0 if not known)",
    KEY_SUBTYPE: f"bytes: the tumour subtype ({UNKNOWN} if not known)",
    KEY_INDEX: "int64: the image's position in its subset (benign then malignant, sorted names)",
}


def shard_name(subset: str, index: int, count: int) -> str:
    """`train-00000-of-00004.tfrecord`."""
    return f"{subset}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def is_tfrecord_folder(path) -> bool:
    """Whether `path` is a folder written by `export_tfrecords` (it holds tfrecords.json)."""
    return Path(path, INDEX_NAME).is_file()


def read_index(folder) -> dict:
    """The tfrecords.json of a TFRecord folder, checked against the shards present (a
    `DataError` if it is unreadable, of another format, or names a missing shard)."""
    folder = Path(folder)
    again = f"export the split again with `python {EXPORT_TOOL}`"
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        subsets = index["subsets"]
        shards = [name for subset in subsets.values() for name in subset["shards"]]
        for entry in subsets.values():
            if entry["images"] != sum(len(entry["files"][name]) for name in CLASS_NAMES):
                raise ValueError("image counts disagree with the file lists")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(
            f"{folder / INDEX_NAME} is unreadable or malformed ({error}); {again}"
        ) from error
    if index.get("format") != FORMAT_NAME or index.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{folder / INDEX_NAME} is not a bc_keras TFRecord index (format "
            f"{index.get('format')!r}, version {index.get('version')!r}); {again}"
        )
    missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {len(missing)} shard(s), e.g. {missing[0]}; {again}")
    return index


def _subset_entry(folder, subset: str, index: dict | None = None) -> dict:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    index = index or read_index(folder)
    if subset not in index["subsets"]:
        raise DataError(f"{folder} has no {subset} shards; export the split again")
    return index["subsets"][subset]


# ----------------------------------------------------------------------------------- writing


def _bytes_feature(value) -> tf.train.Feature:
    value = value.encode("utf-8") if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(raw: bytes, image_format: str, filename: str, label: int, record, index: int):
    """The serialised `tf.train.Example` of one image (`record`: its split.csv row or None)."""
    parsed = None if record is not None else try_parse_filename(Path(filename).name)
    source = record or parsed
    feature = {
        KEY_IMAGE: _bytes_feature(raw),
        KEY_FORMAT: _bytes_feature(image_format.lower()),
        KEY_FILENAME: _bytes_feature(filename),
        KEY_LABEL: _int_feature(label),
        KEY_CLASS: _bytes_feature(CLASS_NAMES[label]),
        KEY_PATIENT: _bytes_feature(source.patient if source else UNKNOWN),
        KEY_MAGNIFICATION: _int_feature(source.magnification if source else 0),
        KEY_SUBTYPE: _bytes_feature(source.subtype if source else UNKNOWN),
        KEY_INDEX: _int_feature(index),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_subset(
    folder, subset: str, files: SplitFiles, subset_dir, shards: int, records=None, on_image=None
) -> tuple[dict, list[tuple[str, str]]]:
    """Writes one subset's shards into `folder`: the k-th readable image of `files` (in their
    order) is record k // shards of shard k % shards; unreadable images are left out.

    Args:
        folder: the folder to write the shards into.
        subset: "train", "val" or "test" (names the shards).
        files: the subset's images, from `list_split_files` on the prepared folder.
        subset_dir: the folder holding their class folders (file names are relative to those).
        shards: how many shards.
        records: split.csv records by `subset/class/name` (patients, magnifications).
        on_image: called after every image read.

    Returns:
        The subset's tfrecords.json entry, and the skipped `(path, reason)` pairs.
    """
    names = [shard_name(subset, i, shards) for i in range(shards)]
    entry = {
        "shards": names,
        "images": 0,
        "classes": {name: 0 for name in CLASS_NAMES},
        "files": {name: [] for name in CLASS_NAMES},
        "skipped": [],
    }
    skipped = []
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(tf.io.TFRecordWriter(str(Path(folder, n)))) for n in names]
        for path, label in zip(files.paths, files.labels, strict=True):
            label, class_name = int(label), CLASS_NAMES[int(label)]
            filename = Path(os.path.relpath(path, Path(subset_dir, class_name))).as_posix()
            raw = Path(path).read_bytes()
            check = check_bytes(raw)
            if on_image is not None:
                on_image()
            if not check.ok:
                skipped.append((path, check.problem))
                entry["skipped"].append([f"{class_name}/{filename}", check.problem])
                continue
            record = (records or {}).get(f"{subset}/{class_name}/{filename}")
            position = entry["images"]
            example = make_example(raw, check.format, filename, label, record, position)
            writers[position % shards].write(example)
            entry["images"] += 1
            entry["classes"][class_name] += 1
            entry["files"][class_name].append(filename)
    return entry, skipped


# ----------------------------------------------------------------------------------- reading


def list_record_files(folder, subset: str) -> SplitFiles:
    """`bc_keras.data.list_split_files` of a TFRecord folder: the paths the images would have
    in the prepared folder (`folder/subset/class/name`; names, patients and magnifications
    parse as usual, but no such file exists) and their labels, in the folder pipeline's order."""
    entry = _subset_entry(folder, subset)
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for filename in entry["files"][name]:
            paths.append(os.path.join(Path(folder) / subset / name, filename))
            labels.append(label)
    if not paths:
        raise DataError(f"{folder} holds no {subset} image; export a split that has some")
    return SplitFiles(paths, np.asarray(labels, dtype=np.int32))


def check_pipeline(folder, pipeline: str) -> None:
    """Refuses any pipeline but tf.data on a TFRecord folder (any pipeline reads an image
    folder)."""
    if pipeline != PIPELINE_TFDATA and is_tfrecord_folder(folder):
        raise DataError(
            f"--data {folder} holds TFRecord shards, which only --pipeline {PIPELINE_TFDATA} "
            f"reads (the report's ImageDataGenerator reads image folders); pass --pipeline "
            f"{PIPELINE_TFDATA} or the prepared image folder"
        )


def _wanted(folder, subset: str, files: SplitFiles | None) -> np.ndarray | None:
    """Which of the subset's images `files` names (a boolean mask over the subset's order);
    None when they are the whole subset."""
    if files is None:
        return None
    listing = list_record_files(folder, subset).paths
    subset_dir = os.path.abspath(Path(folder) / subset)

    def key(path):
        return os.path.relpath(os.path.abspath(path), subset_dir)

    where = {key(path): i for i, path in enumerate(listing)}
    positions = []
    for path in files.paths:
        position = where.get(key(path))
        if position is None:
            raise DataError(
                f"{path} is not a {subset} image of the TFRecord folder {folder}; list the "
                "files with bc_keras.data.list_split_files on that folder"
            )
        positions.append(position)
    positions = np.asarray(positions, dtype=np.int64)
    if np.any(np.diff(positions) <= 0):
        raise ValueError(
            "files of a TFRecord folder must be a subsequence of list_split_files' order, "
            "without repeats. Received: files out of order"
        )
    if len(positions) == len(listing):
        return None
    wanted = np.zeros(len(listing), dtype=bool)
    wanted[positions] = True
    return wanted


def record_dataset(folder, subset: str, index: dict | None = None) -> tf.data.Dataset:
    """The subset's serialised examples in the folder pipeline's order: its shards read in
    parallel, one record from each in turn (see the module docstring)."""
    names = _subset_entry(folder, subset, index)["shards"]
    shards = tf.data.Dataset.from_tensor_slices([str(Path(folder) / name) for name in names])
    return shards.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(names),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _parse(serialized):
    features = {
        KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
        KEY_INDEX: tf.io.FixedLenFeature([], tf.int64),
    }
    example = tf.io.parse_single_example(serialized, features)
    return example[KEY_INDEX], example[KEY_IMAGE]


def _decoded_records(records, image_size: int, interpolation: str, wanted=None):
    """uint8 images of a stream of serialised examples (only those `wanted`, a mask over
    their `KEY_INDEX`)."""
    check_interpolation(interpolation)
    data = records.map(_parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if wanted is not None:
        wanted = tf.constant(wanted)
        data = data.filter(lambda i, raw: tf.gather(wanted, i))
    return data.map(
        lambda i, raw: decode_bytes_and_resize(raw, image_size, interpolation),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def decoded_record_dataset(
    folder, subset: str, files: SplitFiles, image_size: int, interpolation: str, cache=True
):
    """`bc_keras.data.decoded_dataset` for TFRecords: `(uint8 image, label)` pairs of `files`
    (from `list_split_files` on the folder, or a subsequence of it), cached alike."""
    images = _decoded_records(
        record_dataset(folder, subset),
        image_size,
        interpolation,
        _wanted(folder, subset, files),
    )
    labels = tf.data.Dataset.from_tensor_slices(np.asarray(files.labels, np.float32))
    dataset = tf.data.Dataset.zip((images, labels))
    if cache is True:
        return dataset.cache()
    return dataset.cache(str(cache)) if cache else dataset


def tfdata_from_records(folder, subset: str, files: SplitFiles, options, *, cache=True, epochs=1):
    """`bc_keras.data.tfdata_from_files` reading a TFRecord folder's shards instead of files:
    the same batches for the same `files` (from `list_split_files` on the folder) and options."""
    decoded = decoded_record_dataset(
        folder, subset, files, options.image_size, options.interpolation, cache
    )
    return epochs_from_decoded(decoded, len(files.paths), options, epochs=epochs)


def read_encoded(path) -> bytes:
    """The encoded bytes of an image file, or of the TFRecord image that `list_split_files`
    names `path` (`folder/subset/class/name`), e.g. to show it in a figure."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    folder = next((parent for parent in path.parents if is_tfrecord_folder(parent)), None)
    subset = None if folder is None else path.relative_to(folder).parts[0]
    listing = [] if subset not in SUBSETS else list_record_files(folder, subset).paths
    listing = [os.path.normpath(p) for p in listing]
    if os.path.normpath(path) not in listing:
        raise DataError(f"{path} is neither an image file nor an image of a TFRecord folder")
    position = listing.index(os.path.normpath(path))
    shards = _subset_entry(folder, subset)["shards"]
    records = tf.data.TFRecordDataset(str(folder / shards[position % len(shards)]))
    return _parse(next(iter(records.skip(position // len(shards)))))[1].numpy()


# ------------------------------------------------------------------------- unlabelled images


def find_image_files(folder, subsets=(SUBSET_TRAIN,)) -> list[str]:
    """Image files under `folder`, searched recursively, in sorted path order; in a prepared
    split (it holds split.csv) only its `subsets` folders are searched."""
    folder = Path(folder)
    roots = [folder]
    if (folder / MANIFEST_NAME).is_file():
        roots = [folder / subset for subset in subsets if (folder / subset).is_dir()]
    found = []
    for root_folder in roots:
        for root, _, names in sorted(os.walk(root_folder), key=lambda item: item[0]):
            for name in sorted(names):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.join(root, name))
    return found


def unlabeled_images(
    sources,
    image_size: int,
    *,
    interpolation: str = "bilinear",
    subsets=(SUBSET_TRAIN,),
    check: bool = True,
    cache=False,
):
    """Every image of a mix of image folders and TFRecord folders, decoded to uint8
    `[size, size, 3]` (bilinear, as `bc_keras.data.simclr_dataset_from_files` decodes), for
    SimCLR pretraining.

    The order is fixed: sources as given; in an image folder, sorted paths (searched
    recursively); in a TFRecord folder, each of `subsets` in the folder pipeline's order. Of a
    prepared split or a TFRecord folder only `subsets` are used, by default the training
    images, so that validation and test images stay unseen.

    Args:
        sources: a path or a list of paths of folders.
        image_size: side of the square images.
        interpolation: PIL's resize filter.
        subsets: the subsets taken from prepared splits and TFRecord folders.
        check: verify the images of image folders and skip unreadable ones with a warning.
        cache: True (memory), a file path prefix, or False.

    Returns:
        `(dataset, count)`: a `tf.data.Dataset` of uint8 images with a known cardinality, and
        the number of images.

    Raises:
        DataError: for a missing path, a file, a folder given twice, or one without images.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [Path(source) for source in sources]
    if not sources:
        raise ValueError("sources must name at least one folder. Received: sources=[]")
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"subsets must be among {SUBSETS}. Received: subsets={subsets!r}")
    check_interpolation(interpolation)
    parts, count, seen = [], 0, set()
    for source in sources:
        if not source.exists():
            raise DataError(
                f"unlabelled image source {source} does not exist; pass image folders or "
                "TFRecord folders (made by data_tools/export_tfrecords.py)"
            )
        if not source.is_dir():
            raise DataError(f"unlabelled image source {source} is not a folder; pass its folder")
        if source.resolve() in seen:
            raise DataError(f"unlabelled image source {source} is given twice; pass it once")
        seen.add(source.resolve())
        found = 0
        if is_tfrecord_folder(source):
            index = read_index(source)
            for subset in subsets:
                images = _subset_entry(source, subset, index)["images"]
                if images:
                    records = record_dataset(source, subset, index)
                    parts.append(_decoded_records(records, image_size, interpolation))
                    found += images
        else:
            paths = find_image_files(source, subsets)
            if check and paths:
                scan = check_images(paths)
                for line in describe_problems(scan, str(source)):
                    warnings.warn(line, stacklevel=2)
                paths = scan.good
            if paths:
                decoded = decoded_dataset(
                    paths, np.zeros(len(paths)), image_size, interpolation, cache=False
                )
                parts.append(decoded.map(lambda image, _: image))
                found = len(paths)
        if not found:
            kinds = ", ".join(IMAGE_EXTENSIONS)
            raise DataError(
                f"unlabelled image source {source} holds no readable image (searched "
                f"recursively for {kinds}, or TFRecords of {', '.join(subsets)}); pass a folder "
                "with images"
            )
        count += found
    dataset = reduce(lambda a, b: a.concatenate(b), parts)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(str(cache))
    return dataset, count
