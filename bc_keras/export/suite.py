"""Every export of a model at once (`--format all`) and, optionally, its check on a test split:
what the export command and the study's deployment analysis run."""

from __future__ import annotations

import json
from pathlib import Path

from bc_keras import runs
from bc_keras.errors import RunError
from bc_keras.export import ALL_EXPORTS, ALL_INDEX, export_subfolder, formats


def check_all_folder(out) -> Path:
    """`--format all`'s folder: new, empty, or an earlier `--format all` (with exports.json)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; name a folder for the exports")
    if out.is_dir() and any(out.iterdir()) and not (out / ALL_INDEX).is_file():
        raise RunError(
            f"--out {out} exists and is not a bc_keras export folder (no {ALL_INDEX}); choose "
            "a new folder or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_jobs(model_path, out, jobs, all_folder: bool, log=print, **options) -> list[Path]:
    """Exports `model_path` once per `(format, quantisation)` of `jobs`: into `out` itself,
    or (`all_folder`) each into its subfolder with exports.json listing them. `options` go to
    `formats.export_model` (calibration, tta, max_side, calibration_count). Returns the
    export folders."""
    out = check_all_folder(out) if all_folder else Path(out)
    folders = []
    for fmt, quantize in jobs:
        folder = out / export_subfolder(fmt, quantize) if all_folder else out
        path = formats.export_model(model_path, folder, fmt, quantize, **options)
        record = json.loads((folder / formats.EXPORT_FILE).read_text())
        log(f"exported {fmt}{'' if quantize == 'none' else ' ' + quantize}: {path} "
            f"({record['size_bytes'] / 1e6:.2f} MB)")  # fmt: skip
        folders.append(folder)
    if all_folder:
        runs.write_json(out / ALL_INDEX, {"exports": [folder.name for folder in folders]})
    return folders


def export_and_check(model_path, out, split, log=print, **options) -> dict:
    """Every export of `model_path` into `out` (int8 calibrated on `split`'s training images
    unless `options` name a calibration split), then their check on `split`'s test images,
    written as out/check.json and out/check.md. Returns the check."""
    from bc_keras.export.check import check_exports, write_check

    options.setdefault("calibration", split)
    folders = export_jobs(model_path, out, ALL_EXPORTS, all_folder=True, log=log, **options)
    result = check_exports(model_path, folders, split)
    write_check(result, out)
    return result
