"""Predict benign/malignant for images with a saved bc_keras model (.h5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bc_keras import cli
from bc_keras.errors import ConfigError, DataError, ModelFileError, RunError


def probability(text: str) -> float:
    """A decision threshold: a probability strictly between 0 and 1 (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a probability in (0, 1), e.g. 0.5, got {text} (predict.py has no "
            "validation set to choose one by a method)"
        )
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Predict with a model saved by train_cnn.py, train_transfer.py or "
        "train_simclr.py. The input size, preprocessing, decision threshold and test-time "
        "augmentation are read from the model file. Writes one row per image (path, "
        "probability_malignant, label) and, when file names are BreaKHis names, a per-patient "
        "summary (mean probability and majority vote) beside it.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("model", help="a .h5 model saved by a bc_keras training script")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--out",
        default="predictions.csv",
        help="CSV of per-image predictions (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=cli.positive_int, default=32, help="images per batch (default: 32)"
    )
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="malignant at or above this probability, in (0, 1) (default: the one stored in "
        "the model)",
    )
    parser.add_argument(
        "--gradcam",
        metavar="DIR",
        default=None,
        help="also write a Grad-CAM overlay of each image (where the malignant evidence is) to "
        "DIR; the same as --explain gradcam DIR",
    )
    parser.add_argument(
        "--explain",
        nargs=2,
        action="append",
        metavar=("METHOD", "DIR"),
        default=[],
        help="also write an overlay of each image's malignant evidence by METHOD to DIR "
        "(<name>_<method>.png, listed in DIR/<method>.csv): gradcam, occlusion (the drop in "
        "probability when a patch is hidden) or lime (superpixels and a local linear "
        "surrogate); may be given once per method",
    )
    parser.add_argument(
        "--occlusion-patch",
        type=cli.positive_int,
        metavar="PX",
        default=None,
        help="occlusion's patch side in pixels, slid in steps of half of it (default: 1/8 of "
        "the model's input size)",
    )
    parser.add_argument(
        "--lime-samples",
        type=cli.positive_int,
        metavar="N",
        default=1000,
        help="perturbed images LIME scores per image (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=cli.non_negative_int,
        metavar="N",
        default=0,
        help="LIME's sampling seed: the same seed gives the same maps (default: %(default)s)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the 8 flips and 90-degree rotations (default: as the model was evaluated)",
    )
    cli.add_quiet_flag(parser)
    return cli.apply_quiet(parser.parse_args(argv))


def _explanations(args) -> list[tuple[str, str, str]]:
    """`(method, folder, flag)` for each overlay folder asked for, checked before any work."""
    asked = [("gradcam", args.gradcam, "--gradcam")] if args.gradcam else []
    asked += [(method, folder, f"--explain {method}") for method, folder in args.explain]
    if not asked:
        return []
    from bc_keras.evaluation.explain import METHOD_LIME, METHODS

    seen = set()
    for method, folder, flag in asked:
        if method not in METHODS:
            raise ConfigError(
                f"--explain {method}: unknown method; choose one of {', '.join(METHODS)}"
            )
        if method in seen:
            raise ConfigError(f"{flag} is asked for twice; give each method one folder")
        seen.add(method)
        if Path(folder).exists() and not Path(folder).is_dir():
            raise RunError(f"{flag} {folder} is a file; name a folder for the overlays")
    if args.lime_samples < 2 and METHOD_LIME in seen:
        raise ConfigError("--lime-samples must be at least 2 (the image and one perturbation)")
    return asked


def _write_explanations(model, metadata, files, explanations, args) -> None:
    from bc_keras.evaluation import explain_panels
    from bc_keras.evaluation.explain import METHOD_TITLES

    for method, folder, flag in explanations:
        try:
            overlays, renamed = explain_panels.write_explanation_overlays(
                model, metadata, files, folder, method, seed=args.seed,
                batch_size=args.batch_size, patch_size=args.occlusion_patch,
                num_samples=args.lime_samples,
            )  # fmt: skip
        except OSError as error:
            raise RunError(
                f"cannot write {METHOD_TITLES[method]} overlays to {folder} ({error.strerror}); "
                f"choose a writable {flag} DIR"
            ) from error
        index = Path(folder) / explain_panels.overlay_index(method)
        title = METHOD_TITLES[method]
        print(f"wrote {len(overlays)} {title} overlays to {folder} (listed in {index})")
        if renamed:
            print(
                f"note: {renamed} images share a file name with another input; their overlays "
                f"are named <name>_<hash>_{method}.png (the hash of the full path) so that none "
                f"replaces another; {index} names each image's overlay"
            )


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise RunError(
            f"--out {out} is a folder; name a .csv file (e.g. {out / 'predictions.csv'})"
        )
    explanations = _explanations(args)
    from bc_keras import models
    from bc_keras.evaluation import inference

    model, metadata = models.load_model(args.model)
    if metadata.get("kind") != "classifier":
        raise ModelFileError(
            f"{args.model} is a {metadata.get('kind', 'unknown')} model, not a classifier; a "
            "SimCLR encoder has no classification head: fine-tune it with `train_simclr.py "
            "finetune` and predict with the classifier it saves"
        )
    size = int(metadata["image_size"])
    if explanations and args.occlusion_patch is not None and args.occlusion_patch > size:
        raise ConfigError(
            f"--occlusion-patch {args.occlusion_patch} is larger than the model's {size} px "
            f"input; give at most {size}"
        )
    if args.threshold is not None:
        metadata["threshold"] = args.threshold
    tta = bool(metadata.get("tta", False)) if args.tta is None else args.tta
    files, repeated = inference.collect_images(args.paths)
    if repeated:
        print(
            f"warning: {len(repeated)} image(s) were named more than once (e.g. {repeated[0]}); "
            "each is predicted once, so that every row of the CSV is a different image",
            file=sys.stderr,
        )
    print(
        f"predicting {len(files)} image(s) at {metadata['image_size']} px, preprocessing "
        f"{metadata.get('preprocess')}, threshold {float(metadata.get('threshold', 0.5)):.4g}"
        + (", test-time augmentation" if tta else "")
    )
    rows, skipped = inference.predict_files(model, metadata, files, args.batch_size, tta=tta)
    for path, reason in skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if not rows:
        raise DataError("no readable image to predict; see the warnings above")
    try:
        written = inference.write_csv(out, inference.IMAGE_COLUMNS, rows)
        patients = inference.summarise_patients(rows, float(metadata.get("threshold", 0.5)))
        if patients:
            patient_out = written.with_name(f"{written.stem}_patients.csv")
            inference.write_csv(patient_out, inference.PATIENT_COLUMNS, patients)
    except OSError as error:
        raise RunError(f"cannot write {out} ({error.strerror}); choose a writable --out") from error
    print(
        f"wrote {len(rows)} prediction(s) to {written}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
    )
    if patients:
        print(f"wrote {len(patients)} patient summaries to {patient_out}")
    if explanations:
        _write_explanations(model, metadata, [row["path"] for row in rows], explanations, args)
    return 0
