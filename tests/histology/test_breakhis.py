"""Tests of BreaKHis file-name parsing and the official counts."""

import pytest

from bc_keras.histology.breakhis import (
    OFFICIAL_IMAGE_COUNTS,
    OFFICIAL_PATIENT_COUNTS,
    OFFICIAL_TOTAL_IMAGES,
    archive_relative_path,
    distribution_table,
    parse_filename,
    patient_folder_name,
    try_parse_filename,
)


def test_parse_benign_name():
    parsed = parse_filename("SOB_B_A-14-22549AB-100-001.png")
    assert parsed.label == "benign"
    assert parsed.subtype == "A"
    assert parsed.year == "14"
    assert parsed.slide == "22549AB"
    assert parsed.magnification == 100
    assert parsed.sequence == 1
    assert parsed.patient == "SOB_B_A-14-22549AB"
    assert parsed.label_index == 0


def test_parse_malignant_name_from_a_path():
    parsed = parse_filename("some/dir/SOB_M_DC-14-2523-400-004.png")
    assert (parsed.label, parsed.subtype, parsed.magnification, parsed.sequence) == (
        "malignant",
        "DC",
        400,
        4,
    )
    assert parsed.label_index == 1
    assert parsed.filename == "SOB_M_DC-14-2523-400-004.png"


def test_same_slide_as_dc_and_lc_gives_two_patients():
    ductal = parse_filename("SOB_M_DC-14-13412-100-001.png")
    lobular = parse_filename("SOB_M_LC-14-13412-100-001.png")
    assert ductal.slide == lobular.slide == "13412"
    assert ductal.patient != lobular.patient
    assert {ductal.patient, lobular.patient} == {"SOB_M_DC-14-13412", "SOB_M_LC-14-13412"}


def test_archive_layout_names():
    parsed = parse_filename("SOB_B_A-14-22549AB-40-001.png")
    assert patient_folder_name(parsed) == "SOB_B_A_14-22549AB"
    assert archive_relative_path(parsed) == (
        "benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png"
    )


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("IMG_0001.png", "does not follow the BreaKHis convention"),
        ("SOB_B_A-14-22549AB-100-001.jpg", "does not follow the BreaKHis convention"),
        ("SOB_B_XX-14-22549AB-100-001.png", "Unknown BreaKHis subtype 'XX'"),
        ("SOB_B_DC-14-22549AB-100-001.png", "is malignant but the name says benign"),
        ("SOB_M_A-14-22549AB-100-001.png", "is benign but the name says malignant"),
        ("SOB_B_A-14-22549AB-50-001.png", "Magnification 50 is not one of"),
    ],
)
def test_bad_names_say_why(name, fragment):
    with pytest.raises(ValueError, match="Received: name=") as info:
        parse_filename(name)
    assert fragment in str(info.value)
    assert try_parse_filename(name) is None


def test_official_counts_add_up_to_the_spec():
    assert sum(sum(counts) for counts in OFFICIAL_IMAGE_COUNTS.values()) == OFFICIAL_TOTAL_IMAGES
    assert sum(OFFICIAL_PATIENT_COUNTS.values()) == 82


def test_distribution_table_format():
    rows = [(40, "benign"), (40, "malignant"), (40, "malignant"), (400, "benign")]
    assert distribution_table(rows) == "\n".join(
        [
            "| Magnification | Benign | Malignant | Total |",
            "|---|---|---|---|",
            "| 40x | 1 | 2 | 3 |",
            "| 400x | 1 | 0 | 1 |",
            "| Total | 2 | 2 | 4 |",
        ]
    )
