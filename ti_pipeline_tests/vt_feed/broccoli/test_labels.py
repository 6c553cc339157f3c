import pytest

from ti_pipeline.core.schema import FILE_CLASSIFICATIONS
from ti_pipeline.core.values import CLASSIFICATION_WORDS
from ti_pipeline.vt_feed.broccoli.labels import map_label


def test_every_mapped_value_is_a_classification_enum_value():
    assert set(CLASSIFICATION_WORDS.values()) <= set(FILE_CLASSIFICATIONS)


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
        ("whitelist", ("WHITELIST", True)),
        ("AV-Detected", ("AV_DETECTED", True)),
        ("unknown", ("UNKNOWN", True)),
        ("coinminer", ("UNKNOWN", False)),
        ("", ("UNKNOWN", False)),
    ],
)
def test_map_label(label, expected):
    assert map_label(label) == expected
