"""One table of number inputs for every path that reads a count (``values.int32``): the VT feed's
tests run it through a feed line, the dump's can run it through a document, and both must agree
with the rule itself.

Each entry is ``(value as it arrives, the int it means or None when it must be rejected)``.
"""

from __future__ import annotations

NUMBER_INPUTS: list[tuple[object, int | None]] = [
    (14, 14),
    (14.0, 14),
    ("14", 14),
    ("14.0", 14),
    (" 14 ", 14),
    ("+14", 14),
    (1e3, 1000),
    (2**31 - 1, 2**31 - 1),
    (14.5, None),
    ("14.5", None),
    ("abc", None),
    ("0x10", None),
    ("1e3", None),
    (True, None),
    ([14], None),
    ({"n": 14}, None),
    (float("nan"), None),
    ("NaN", None),
    (float("inf"), None),
    ("inf", None),
    (2**31, None),
    (2**63, None),
]
