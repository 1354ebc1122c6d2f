"""BreaKHis_v1 facts: class and subtype names, file-name parsing, and the official counts."""

from __future__ import annotations

import re
from dataclasses import dataclass

BENIGN = "benign"
MALIGNANT = "malignant"
# Index = binary label: benign 0, malignant 1 (the order flow_from_directory sees them in).
CLASS_NAMES = (BENIGN, MALIGNANT)
MAGNIFICATIONS = (40, 100, 200, 400)
# The patient or magnification of a file whose name is not a BreaKHis name.
UNKNOWN = "unknown"

# Subtype code -> (class, folder name under <class>/SOB/).
SUBTYPES = {
    "A": (BENIGN, "adenosis"),
    "F": (BENIGN, "fibroadenoma"),
    "PT": (BENIGN, "phyllodes_tumor"),
    "TA": (BENIGN, "tubular_adenoma"),
    "DC": (MALIGNANT, "ductal_carcinoma"),
    "LC": (MALIGNANT, "lobular_carcinoma"),
    "MC": (MALIGNANT, "mucinous_carcinoma"),
    "PC": (MALIGNANT, "papillary_carcinoma"),
}
CLASS_CODES = {"B": BENIGN, "M": MALIGNANT}

# Images per subtype and magnification (40x, 100x, 200x, 400x) and patients per subtype in the
# official archive (Spanhol et al., 2016). They add up to the table in SPEC.md section 1.
OFFICIAL_IMAGE_COUNTS = {
    "A": (114, 113, 111, 106),
    "F": (253, 260, 264, 237),
    "PT": (109, 121, 108, 115),
    "TA": (149, 150, 140, 130),
    "DC": (864, 903, 896, 788),
    "LC": (156, 170, 163, 137),
    "MC": (205, 222, 196, 169),
    "PC": (145, 142, 135, 138),
}
OFFICIAL_PATIENT_COUNTS = {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}
OFFICIAL_TOTAL_IMAGES = 7909
# The one slide (patient) of the archive filed under two subtypes: ductal and lobular carcinoma.
SHARED_SLIDE = "14-13412"
SHARED_SLIDE_SUBTYPES = ("DC", "LC")

# SOB_B_A-14-22549AB-100-001.png: procedure, class, subtype, year, slide, magnification, sequence.
_NAME_PATTERN = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]{1,2})-(?P<year>\d{2})-(?P<slide>[0-9A-Za-z]+)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)\.(?i:png)$"
)


@dataclass(frozen=True)
class BreaKHisName:
    """The fields a BreaKHis file name carries."""

    filename: str
    label: str
    subtype: str
    year: str
    slide: str
    magnification: int
    sequence: int

    @property
    def patient(self) -> str:
        """The dataset's patient folder `SOB_<B|M>_<T>-<yy>-<id>`, the unit of the patient
        recognition rate as the literature defines it: slide 14-13412 is two such folders, one
        ductal, one lobular. Splits group by `slide_id` instead."""
        code = "B" if self.label == BENIGN else "M"
        return f"SOB_{code}_{self.subtype}-{self.year}-{self.slide}"

    @property
    def slide_id(self) -> str:
        """The patient itself, `<yy>-<id>` (e.g. `14-13412`): what every split, fold, label
        fraction and audit groups by, so one patient filed under two subtypes stays whole."""
        return f"{self.year}-{self.slide}"

    @property
    def label_index(self) -> int:
        return CLASS_NAMES.index(self.label)

    @property
    def subtype_folder(self) -> str:
        return SUBTYPES[self.subtype][1]


def parse_filename(name: str) -> BreaKHisName:
    """Parses a BreaKHis image file name (a bare name or a path).

    Raises:
        ValueError: if the name does not follow the BreaKHis convention.
    """
    filename = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _NAME_PATTERN.match(filename)
    if match is None:
        raise ValueError(
            "File name does not follow the BreaKHis convention "
            f"SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png. Received: name={filename!r}"
        )
    subtype = match["subtype"]
    if subtype not in SUBTYPES:
        raise ValueError(
            f"Unknown BreaKHis subtype {subtype!r}; expected one of {sorted(SUBTYPES)}. "
            f"Received: name={filename!r}"
        )
    label = CLASS_CODES[match["cls"]]
    if SUBTYPES[subtype][0] != label:
        raise ValueError(
            f"Subtype {subtype!r} is {SUBTYPES[subtype][0]} but the name says {label}. "
            f"Received: name={filename!r}"
        )
    magnification = int(match["mag"])
    if magnification not in MAGNIFICATIONS:
        raise ValueError(
            f"Magnification {magnification} is not one of {MAGNIFICATIONS}. "
            f"Received: name={filename!r}"
        )
    return BreaKHisName(
        filename=filename,
        label=label,
        subtype=subtype,
        year=match["year"],
        slide=match["slide"],
        magnification=magnification,
        sequence=int(match["seq"]),
    )


def try_parse_filename(name: str) -> BreaKHisName | None:
    """Like `parse_filename`, but returns None for names that do not parse."""
    try:
        return parse_filename(name)
    except ValueError:
        return None


def patient_folder_name(parsed: BreaKHisName) -> str:
    """The slide folder of the archive: `SOB_B_A_14-22549AB` (underscore before the year)."""
    code = "B" if parsed.label == BENIGN else "M"
    return f"SOB_{code}_{parsed.subtype}_{parsed.year}-{parsed.slide}"


def archive_relative_path(parsed: BreaKHisName) -> str:
    """Where the image lives below `histology_slides/breast/` in the official archive."""
    return (
        f"{parsed.label}/SOB/{parsed.subtype_folder}/{patient_folder_name(parsed)}/"
        f"{parsed.magnification}X/{parsed.filename}"
    )


def distribution_table(rows) -> str:
    """The SPEC's markdown table (images per magnification and class) for `rows`.

    Args:
        rows: iterable of `(magnification, label)` pairs.

    Returns:
        The table as markdown, one line per magnification present plus a total line.
    """
    counts: dict[tuple[int, str], int] = {}
    for magnification, label in rows:
        key = (int(magnification), label)
        counts[key] = counts.get(key, 0) + 1
    lines = ["| Magnification | Benign | Malignant | Total |", "|---|---|---|---|"]
    total_benign = total_malignant = 0
    for magnification in sorted({m for m, _ in counts}):
        benign = counts.get((magnification, BENIGN), 0)
        malignant = counts.get((magnification, MALIGNANT), 0)
        total_benign += benign
        total_malignant += malignant
        lines.append(f"| {magnification}x | {benign} | {malignant} | {benign + malignant} |")
    lines.append(
        f"| Total | {total_benign} | {total_malignant} | {total_benign + total_malignant} |"
    )
    return "\n".join(lines)


def slide_id_of(filename: str, default: str = UNKNOWN) -> str:
    """The slide (patient) id `<yy>-<id>` of a BreaKHis file name or path, else `default`."""
    parsed = try_parse_filename(str(filename).replace("\\", "/").rsplit("/", 1)[-1])
    return parsed.slide_id if parsed else default


def describe_files(paths) -> tuple[list[str], list[str]]:
    """Patient folder key (the patient recognition rate's unit) and magnification of each file,
    from BreaKHis names ("unknown" otherwise)."""
    patients, magnifications = [], []
    for path in paths:
        parsed = try_parse_filename(str(path).replace("\\", "/").rsplit("/", 1)[-1])
        patients.append(parsed.patient if parsed else UNKNOWN)
        magnifications.append(str(parsed.magnification) if parsed else UNKNOWN)
    return patients, magnifications
