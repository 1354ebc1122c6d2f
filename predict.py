"""Predict benign/malignant for images with a saved bc_keras model (.h5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bc_keras import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Predict with a model saved by train_cnn.py, train_transfer.py or train_simclr.py. "
        "The input size and preprocessing are read from the model file. Writes one row per image "
        "(path, probability_malignant, label) and, when file names are BreaKHis names, a per-patient "
        "summary (mean probability and majority vote) beside it.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("model", help="a .h5 model saved by a bc_keras training script")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--out", default="predictions.csv", help="CSV of per-image predictions")
    parser.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per batch")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="malignant at or above this probability (default: the model's, 0.5)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from bc_keras import inference, models

    model, metadata = models.load_model(args.model)
    if metadata.get("kind") == "simclr_encoder":
        raise models.ModelFileError(
            f"{args.model} is a SimCLR encoder (no classification head); fine-tune it with "
            "`train_simclr.py finetune` and predict with the classifier it saves."
        )
    if args.threshold is not None:
        metadata["threshold"] = args.threshold
    files = inference.collect_images(args.paths)
    print(
        f"predicting {len(files)} image(s) at {metadata['image_size']}px, preprocessing {metadata.get('preprocess')}"
    )
    rows, skipped = inference.predict_files(model, metadata, files, args.batch_size)
    for path, reason in skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if not rows:
        raise inference.DataError("No readable image to predict; see the warnings above.")
    out = inference.write_csv(args.out, inference.IMAGE_COLUMNS, rows)
    print(
        f"wrote {len(rows)} prediction(s) to {out}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
    )
    patients = inference.summarise_patients(rows, float(metadata.get("threshold", 0.5)))
    if patients:
        patient_out = Path(out).with_name(f"{Path(out).stem}_patients.csv")
        inference.write_csv(patient_out, inference.PATIENT_COLUMNS, patients)
        print(
            f"wrote {len(patients)} patient summar{'y' if len(patients) == 1 else 'ies'} to {patient_out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
