"""Write a prepared split (made by prepare_breakhis.py) as sharded TFRecords, for fast parallel
reading at scale: DIR/{train,val,test}-NNNNN-of-NNNNN.tfrecord, one tf.train.Example per image
holding its original encoded bytes (decoding gives the same pixels as the file), its label
(0 benign, 1 malignant), patient, magnification and file name; DIR/tfrecords.json (shards,
image counts per subset and class, the files in the input pipeline's order, the split.csv
rows); and copies of split.csv and prepare.json. Pass DIR as --data of a training script
(--pipeline tfdata). DIR is built beside itself and renamed at the end: an interrupted export
leaves nothing. Unreadable images are skipped with a warning."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

from bc_keras import cli
from bc_keras.errors import DataError

SHARD_MEBIBYTES = 128


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument("split_dir", metavar="SPLIT_DIR", help="prepared split to export")
    parser.add_argument("--out", required=True, metavar="DIR", help="TFRecord folder to write")
    parser.add_argument(
        "--shards",
        type=cli.positive_int,
        default=None,
        metavar="N",
        help="shards per subset (a subset with fewer images gets one per image; default: one "
        f"per {SHARD_MEBIBYTES} MiB of images, at least 1)",
    )
    cli.add_overwrite_flag(parser)
    cli.add_quiet_flag(parser)
    return parser


def check_paths(split_dir: Path, out: Path, overwrite: bool):
    """The split's split.csv records after refusing a missing split and a dangerous --out."""
    from bc_keras.data.tfrecords import is_tfrecord_folder
    from bc_keras.prepare.output import split_records_and_out

    if is_tfrecord_folder(split_dir):
        raise DataError(f"{split_dir} already holds TFRecords; pass the prepared image folder")
    return split_records_and_out(split_dir, out, overwrite)


def shard_count(paths, shards: int | None) -> int:
    """`shards`, or one per SHARD_MEBIBYTES of the files; never more than one per file."""
    if shards is None:
        size = sum(os.path.getsize(path) for path in paths)
        shards = math.ceil(size / (SHARD_MEBIBYTES << 20))
    return max(1, min(shards, len(paths)))


def export(split_dir, out, shards: int | None = None, overwrite: bool = False, tty=False) -> dict:
    """Writes the TFRecord folder `out` of `split_dir`; returns what tfrecords.json holds."""
    from bc_keras.data import SUBSETS, list_split_files, tfrecords
    from bc_keras.histology.images import ImageScan, describe_problems
    from bc_keras.prepare.manifest import MANIFEST_NAME, SETTINGS_NAME, manifest_path_of
    from bc_keras.prepare.normalize import Progress
    from bc_keras.prepare.output import staged_output

    split_dir, out = Path(split_dir), Path(out)
    records = check_paths(split_dir, out, overwrite)
    by_path = {manifest_path_of(r): r for r in records}
    listed = {subset: list_split_files(split_dir, subset, check=False) for subset in SUBSETS}
    progress = Progress("exported", sum(len(f.paths) for f in listed.values()), print, tty)
    done = 0

    def advance():
        nonlocal done
        done += 1
        progress.update(done)

    with open(split_dir / MANIFEST_NAME, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = {
        "format": tfrecords.FORMAT_NAME,
        "version": tfrecords.FORMAT_VERSION,
        "source": str(split_dir.absolute()),
        "features": tfrecords.FEATURE_DESCRIPTIONS,
        "images": 0,
        "subsets": {},
        "manifest": rows,
    }
    with staged_output(out) as staging:
        for subset, files in listed.items():
            count = shard_count(files.paths, shards)
            entry, skipped = tfrecords.write_subset(
                staging, subset, files, split_dir / subset, count, by_path, advance
            )
            for line in describe_problems(ImageScan(skipped=skipped), str(split_dir / subset)):
                warnings.warn(line, stacklevel=2)
            if not entry["images"]:
                raise DataError(
                    f"{split_dir / subset} holds no readable image; prepare the split again"
                )
            index["subsets"][subset] = entry
            index["images"] += entry["images"]
        for name in (MANIFEST_NAME, SETTINGS_NAME):
            if (split_dir / name).is_file():
                shutil.copyfile(split_dir / name, staging / name)
        text = json.dumps(index, indent=1) + "\n"
        (staging / tfrecords.INDEX_NAME).write_text(text, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    args = cli.apply_quiet(build_parser().parse_args(argv))
    index = export(args.split_dir, args.out, args.shards, args.overwrite, sys.stdout.isatty())
    for subset, entry in index["subsets"].items():
        classes = ", ".join(f"{count} {name}" for name, count in entry["classes"].items())
        print(f"{subset}: {entry['images']} images ({classes}) in {len(entry['shards'])} shard(s)")
    print(f"Wrote {args.out} ({index['images']} images); pass it as --data (--pipeline tfdata)")
    return 0
