import pytest

from ti_pipeline.broccoli.labels import LABELS, map_label
from ti_pipeline.schema import FILE_CLASSIFICATIONS


def test_every_mapped_value_is_a_classification_enum_value():
    assert set(LABELS.values()) <= set(FILE_CLASSIFICATIONS)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("pua", ("UNWANTED", True)),
        ("PUA", ("UNWANTED", True)),
        ("adware", ("UNWANTED", True)),
        ("malware", ("MALWARE", True)),
        ("Ransomware", ("RANSOMWARE", True)),
        ("hack-tool", ("HACKTOOL", True)),
        ("Hack Tool", ("HACKTOOL", True)),
        ("mal_tool", ("MALTOOL", True)),
        ("clean", ("INDIFFERENT", True)),
        ("unknown", ("UNKNOWN", True)),
        ("coinminer", ("UNKNOWN", False)),
        ("", ("UNKNOWN", False)),
    ],
)
def test_map_label(label, expected):
    assert map_label(label) == expected
