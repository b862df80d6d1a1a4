"""The BreakHis file-name grammar and folder cross-checks."""

import pytest

from pipeline.core.breakhis import SUBTYPES, ParsedName, folder_disagreement, parse_file_name


@pytest.mark.parametrize("code", sorted(SUBTYPES))
def test_every_subtype_parses(code):
    cls = "B" if SUBTYPES[code][2] == 0 else "M"
    parsed = parse_file_name(f"SOB_{cls}_{code}-14-22549AB-100-001.png")
    assert parsed is not None
    assert parsed.subtype == code
    assert parsed.label == SUBTYPES[code][2]
    assert parsed.patient_id == "22549AB" and parsed.patient_num == 22549
    assert parsed.magnification == 100 and parsed.seq == 1


@pytest.mark.parametrize("patient,num", [("15687B", 15687), ("22549AB", 22549), ("29960CD", 29960), ("9133", 9133)])
def test_patient_codes(patient, num):
    parsed = parse_file_name(f"SOB_M_PC-14-{patient}-400-012.png")
    assert parsed.patient_id == patient and parsed.patient_num == num and parsed.seq == 12


@pytest.mark.parametrize("name", [
    "SOB_B_DC-14-22549AB-100-001.png",  # malignant subtype under a benign code
    "SOB_B_A-14-22549AB-150-001.png",  # magnification that does not exist
    "SOB_B_A-14-22549AB-100-001.jpg",
    "SOB_X_A-14-22549AB-100-001.png",
    "random.png",
])
def test_bad_names_do_not_parse(name):
    assert parse_file_name(name) is None


def test_round_trip_name_and_folder():
    parsed = ParsedName(label=0, subtype="PT", year="14", patient_id="21998AB", patient_num=21998, magnification=40, seq=7)
    assert parse_file_name(parsed.file_name()) == parsed
    parts = tuple(parsed.relative_dir().split("/"))
    assert folder_disagreement(parsed, parts) is None
    wrong_mag = parts[:-1] + ("100X",)
    assert "magnification" in folder_disagreement(parsed, wrong_mag)
    wrong_patient = parts[:-2] + ("SOB_B_PT_14-21998CD",) + parts[-1:]
    assert "patient folder" in folder_disagreement(parsed, wrong_patient)
