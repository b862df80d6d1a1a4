"""The BreakHis naming grammar and its vocabulary.

A BreakHis image lives at
``.../breast/<benign|malignant>/SOB/<subtype_folder>/SOB_<B|M>_<TYPE>_<yy>-<patient>/<mag>X/<file>``
and its file name repeats most of that information:
``SOB_<B|M>_<TYPE>-<yy>-<patient>-<mag>-<seq>.png``. Parsing both and checking that they agree is
how the indexer catches misplaced files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLASS_NAMES = {0: "benign", 1: "malignant"}
CLASS_CODES = {"B": 0, "M": 1}

SUBTYPES: dict[str, tuple[str, str, int]] = {
    # code: (readable name, folder name, label)
    "A": ("adenosis", "adenosis", 0),
    "F": ("fibroadenoma", "fibroadenoma", 0),
    "PT": ("phyllodes tumor", "phyllodes_tumor", 0),
    "TA": ("tubular adenoma", "tubular_adenoma", 0),
    "DC": ("ductal carcinoma", "ductal_carcinoma", 1),
    "LC": ("lobular carcinoma", "lobular_carcinoma", 1),
    "MC": ("mucinous carcinoma", "mucinous_carcinoma", 1),
    "PC": ("papillary carcinoma", "papillary_carcinoma", 1),
}
SUBTYPE_BY_FOLDER = {folder: code for code, (_, folder, _) in SUBTYPES.items()}
MAGNIFICATIONS = (40, 100, 200, 400)

# Patient numbers have at most 9 digits and sequence numbers 4, so they fit the manifest's int32/int16
# columns; a longer number is a name that does not parse (a reject), never an overflow.
FILE_RE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>A|F|PT|TA|DC|LC|MC|PC)-(?P<yy>\d{2})-(?P<patient>(?P<num>\d{1,9})[A-Z]*)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{1,4})\.png$"
)
PATIENT_DIR_RE = re.compile(r"^SOB_(?P<cls>[BM])_(?P<subtype>A|F|PT|TA|DC|LC|MC|PC)_(?P<yy>\d{2})-(?P<patient>\d{1,9}[A-Z]*)$")
MAG_DIR_RE = re.compile(r"^(?P<mag>40|100|200|400)X$")


@dataclass(frozen=True)
class ParsedName:
    """Everything a BreakHis file name says about its image."""

    label: int
    subtype: str
    year: str
    patient_id: str
    patient_num: int
    magnification: int
    seq: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def subtype_name(self) -> str:
        return SUBTYPES[self.subtype][0]

    def file_name(self) -> str:
        cls = "B" if self.label == 0 else "M"
        return f"SOB_{cls}_{self.subtype}-{self.year}-{self.patient_id}-{self.magnification}-{self.seq:03d}.png"

    def relative_dir(self) -> str:
        """Folder of this image relative to ``BreaKHis_v1/histology_slides/breast``."""
        cls = "B" if self.label == 0 else "M"
        folder = SUBTYPES[self.subtype][1]
        return f"{self.class_name}/SOB/{folder}/SOB_{cls}_{self.subtype}_{self.year}-{self.patient_id}/{self.magnification}X"


def parse_file_name(name: str) -> ParsedName | None:
    """Parse a BreakHis file name; ``None`` when it does not follow the grammar."""
    m = FILE_RE.match(name)
    if not m:
        return None
    label = CLASS_CODES[m["cls"]]
    if SUBTYPES[m["subtype"]][2] != label:
        return None  # e.g. SOB_B_DC: a malignant subtype under a benign code
    return ParsedName(
        label=label,
        subtype=m["subtype"],
        year=m["yy"],
        patient_id=m["patient"],
        patient_num=int(m["num"]),
        magnification=int(m["mag"]),
        seq=int(m["seq"]),
    )


def folder_disagreement(parsed: ParsedName, parts: tuple[str, ...]) -> str | None:
    """Compare the name with its last four folders (class/SOB/subtype/patient/mag); return why they differ."""
    if len(parts) < 5:
        return "file is not inside <class>/SOB/<subtype>/<patient>/<mag>X folders"
    class_dir, sob_dir, subtype_dir, patient_dir, mag_dir = parts[-5:]
    if class_dir != parsed.class_name or sob_dir != "SOB":
        return f"class folder '{class_dir}/{sob_dir}' but the name says '{parsed.class_name}/SOB'"
    if SUBTYPE_BY_FOLDER.get(subtype_dir) != parsed.subtype:
        return f"subtype folder '{subtype_dir}' but the name says subtype {parsed.subtype}"
    pm = PATIENT_DIR_RE.match(patient_dir)
    if not pm or pm["patient"] != parsed.patient_id or pm["subtype"] != parsed.subtype or pm["yy"] != parsed.year:
        return f"patient folder '{patient_dir}' does not match patient {parsed.patient_id} / subtype {parsed.subtype}"
    mm = MAG_DIR_RE.match(mag_dir)
    if not mm or int(mm["mag"]) != parsed.magnification:
        return f"magnification folder '{mag_dir}' but the name says {parsed.magnification}X"
    return None
