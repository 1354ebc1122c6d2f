"""The export check as a markdown table (TensorFlow-free, so that the report reads a study's
check.json files without loading TensorFlow)."""

from __future__ import annotations

CHECK_JSON, CHECK_MARKDOWN = "check.json", "check.md"
REFERENCE = "keras .h5 (float32)"


def _value(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _difference(entry: dict | None) -> str:
    if not entry or entry["difference"] is None:
        return ""
    interval = "" if entry["low"] is None else f" [{entry['low']:+.3f}, {entry['high']:+.3f}]"
    return f"{entry['difference']:+.3f}{interval}"


def check_markdown(result: dict) -> str:
    """The check as a markdown table."""
    lines = [
        f"Export check of {result['model']} on {result['split']} (test: {result['images']} "
        f"images, {result['patients']} patients; threshold {result['threshold']:.4g}; "
        f"differences are export - {REFERENCE} with paired patient-bootstrap 95% intervals, "
        f"{result['bootstrap_samples']} resamples; latency on one "
        f"{result['image_shape'][1]}x{result['image_shape'][0]} image, CPU).",
        "",
        "| model | size (MB) | AUC | Δ AUC | balanced acc. | Δ bal. acc. | patient rate | "
        "Δ patient rate | max abs Δp | ms/batch 1 | ms/batch 32 |",
        "|---|---:|---:|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for row in result["models"]:
        differences = row.get("differences", {})
        cells = [
            row["name"],
            f"{row['size_bytes'] / 1e6:.2f}",
            _value(row["auc_roc"]),
            _difference(differences.get("auc_roc")),
            _value(row["balanced_accuracy"]),
            _difference(differences.get("balanced_accuracy")),
            _value(row["patient_recognition_rate"]),
            _difference(differences.get("patient_recognition_rate")),
            _value(row.get("max_abs_probability_difference"), 6)
            if "max_abs_probability_difference" in row
            else "",
            f"{row['latency_ms']['1']:.1f}",
            f"{row['latency_ms']['32']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
