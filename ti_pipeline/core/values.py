"""One rule per fact: how a value from any feed becomes a column value.

Both feeders of ``ioc_file_hashes`` (the Sage dump and the VT feed) and the curated tokens read
numbers, hashes, dates, detection lists and classification words through these functions, so the
same input gives the same column on every path. Each function returns ``None`` for a value that is
simply absent and raises ``InvalidValue`` (with the reject reason) for one that is present but
cannot be stored as it is: nothing is truncated or guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

# schema (SQLAlchemy) is imported where a function needs it: a VT pool worker applies these rules with the
# column limits it is handed (vt_feed/records.py) and must not pay for importing SQLAlchemy.
from ti_pipeline.core import keys

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# What DATETIME holds on MariaDB/MySQL (TiDB and SQLite hold more): the range every loader accepts.
DATETIME_MIN = datetime(1000, 1, 1)
DATETIME_MAX = datetime(9999, 12, 31, 23, 59, 59)
# A scan dated further ahead than this would win "newest scan" forever: it is rejected.
FUTURE_SLACK = timedelta(days=1)

FILTER_CLASSIFICATION_NOT_IMPORTED = "classification_not_imported"

_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")


class InvalidValue(ValueError):
    """A present value that no column can hold as it is; ``reason`` goes to the quarantine."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- numbers -------------------------------------------------------------------------------------


def as_int(value: object, field: str) -> int | None:
    """int32, int64, integral doubles and integer strings (``"14"``, ``" 14.0 "``) as an int.

    None when absent; ``InvalidValue`` for anything else (NaN, infinities, fractions, words, bools).
    """
    if value is None:
        return None
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise InvalidValue(f"invalid_number:{field}")
    if isinstance(value, int):  # bson Int64
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise InvalidValue(f"invalid_number:{field}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _INT_TEXT.fullmatch(text):
            try:
                return int(text.split(".", 1)[0])
            except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits): no column holds it
                raise InvalidValue(f"out_of_range:{field}") from None
    raise InvalidValue(f"invalid_number:{field}")


def int32(value: object, field: str) -> int | None:
    """``as_int`` within the range of an INTEGER column."""
    number = as_int(value, field)
    if number is not None and not INT32_MIN <= number <= INT32_MAX:
        raise InvalidValue(f"out_of_range:{field}")
    return number


# ---- text ----------------------------------------------------------------------------------------


def as_text(value: object) -> str | None:
    """A non-blank string, stripped; anything else (missing, wrong type in old records) is None."""
    if isinstance(value, str):
        text = value.strip()
        return text or None
    return None


def too_long_reason(column: str) -> str:
    """The reason a value longer than its column can hold is rejected with (every path that checks lengths)."""
    return f"value_too_long:{column}"


def too_long(value: str, chars: int, utf8_bytes: int | None) -> bool:
    """Whether a column holding ``chars`` characters (and ``utf8_bytes`` UTF-8 bytes, for TEXT) cannot hold ``value``."""
    return len(value) > chars or (utf8_bytes is not None and len(value) * 4 > utf8_bytes and len(value.encode()) > utf8_bytes)


def oversized_column(table_name: str, row: dict) -> str | None:
    """The first string column of ``row`` longer than ``table_name`` can hold, or None."""
    from ti_pipeline.core import schema

    for column, limit in schema.TEXT_LIMITS[table_name].items():
        value = row.get(column)
        if isinstance(value, str) and too_long(value, limit.chars, limit.utf8_bytes):
            return column
    return None


def check_lengths(table_name: str, row: dict) -> dict:
    """``row`` unchanged, or ``InvalidValue("value_too_long:<column>")``: never truncated."""
    column = oversized_column(table_name, row)
    if column is not None:
        raise InvalidValue(too_long_reason(column))
    return row


# ---- hashes --------------------------------------------------------------------------------------


def digest_bytes(value: object, kind: str) -> bytes | None:
    """The raw bytes a BINARY column holds of a hex digest (``keys.normalise_hex``), or None."""
    text = keys.normalise_hex(value, kind)
    return bytes.fromhex(text) if text is not None else None


# ---- dates ---------------------------------------------------------------------------------------


def storable_datetime(value: datetime, field: str, now: datetime | None = None) -> datetime:
    """A naive UTC datetime every warehouse stores; a scan date also not more than a day ahead of ``now``."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not DATETIME_MIN <= value <= DATETIME_MAX:
        raise InvalidValue(f"out_of_range:{field}")
    if now is not None and value > now + FUTURE_SLACK:
        raise InvalidValue(f"in_future:{field}")
    return value


def from_epoch_ms(value: object, field: str) -> datetime | None:
    """Mongo's epoch milliseconds (int, Int64, double, numeric string or a BSON date) as naive UTC.

    0 and absent mean "not recorded" (None); NaN, infinities and dates outside DATETIME are rejected.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return storable_datetime(value, field)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"invalid_timestamp:{field}")
        ms = int(value)
    else:
        try:
            ms = as_int(value, field)
        except InvalidValue:
            raise InvalidValue(f"invalid_timestamp:{field}") from None
    if not ms:
        return None
    try:
        moment = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    except OverflowError:
        raise InvalidValue(f"out_of_range:{field}") from None
    return storable_datetime(moment, field)


def from_epoch_seconds(value: int, field: str, now: datetime | None = None) -> datetime:
    """VT v3 epoch seconds as a storable naive UTC datetime."""
    try:
        moment = datetime(1970, 1, 1) + timedelta(seconds=value)
    except OverflowError:
        raise InvalidValue(f"out_of_range:{field}") from None
    return storable_datetime(moment, field, now)


def parse_scan_date(value: object, now: datetime | None = None) -> datetime | None:
    """VT v2 ``scan_date`` ("YYYY-MM-DD HH:MM:SS", UTC) as naive UTC; None when absent."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return storable_datetime(value, "scan_date", now)
    if not isinstance(value, str) or len(value) != 19 or value[4] != "-" or value[7] != "-" or value[10] != " ":
        raise InvalidValue("invalid_scan_date")
    fields = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
    digits = "".join(fields)
    if value[13] != ":" or value[16] != ":" or not (digits.isascii() and digits.isdigit()):
        raise InvalidValue("invalid_scan_date")  # int() would also take signs, blanks and other scripts' digits
    try:  # fixed positions: 10x cheaper than strptime on the hot path
        moment = datetime(*map(int, fields))
    except ValueError:
        raise InvalidValue("invalid_scan_date") from None
    return storable_datetime(moment, "scan_date", now)


# ---- detections ----------------------------------------------------------------------------------


def detection_names(detections: Iterable[tuple[str, object]]) -> str | None:
    """``Engine:Result`` of each detecting engine that gives a non-empty result, joined by ``;``.

    The caller passes only the engines that detected (v2 ``detected: true``, v3 category
    ``malicious``); an engine without a usable result name is left out, as the upstream did.
    """
    names = [f"{engine}:{result}" for engine, result in detections if type(result) is str and result.strip()]
    return ";".join(names) or None


# ---- classification ------------------------------------------------------------------------------

# Every word a source uses for a file's verdict (the dump's ``response`` and ML verdict, Broccoli's
# label, the tokens' response) -> the ``classification`` ENUM. Matching ignores case, blanks and
# ``-``/``_`` (``Hack-Tool`` = ``hacktool``). A word outside this table is an unknown classification.
CLASSIFICATION_WORDS: dict[str, str] = {
    "ransomware": "RANSOMWARE",
    "maltool": "MALTOOL",
    "hacktool": "HACKTOOL",
    "pua": "UNWANTED",
    "pup": "UNWANTED",
    "unwanted": "UNWANTED",
    "adware": "UNWANTED",
    "riskware": "UNWANTED",
    "grayware": "UNWANTED",
    "malware": "MALWARE",
    "malicious": "MALWARE",
    "trojan": "MALWARE",
    "virus": "MALWARE",
    "worm": "MALWARE",
    "backdoor": "MALWARE",
    "suspicious": "SUSPICIOUS",
    "blacklist": "BLACKLIST",
    "av_detected": "AV_DETECTED",
    "indifferent": "INDIFFERENT",
    "benign": "INDIFFERENT",
    "clean": "INDIFFERENT",
    "whitelist": "WHITELIST",
    "unknown": "UNKNOWN",
}
_SEPARATORS = re.compile(r"[\s_-]+")


def _word_key(word: str) -> str:
    return _SEPARATORS.sub("", word.lower())


_CLASSIFICATION_BY_KEY = {_word_key(word): value for word, value in CLASSIFICATION_WORDS.items()}


def classification_of(word: object) -> str | None:
    """The ENUM value of a classification word, or None for a word no source is known to use."""
    if not isinstance(word, str):
        return None
    return _CLASSIFICATION_BY_KEY.get(_word_key(word))


# The upstream's production import set: what is threat-relevant enters ioc_file_hashes.
PRODUCTION_CLASSIFICATIONS = (
    "RANSOMWARE", "MALTOOL", "HACKTOOL", "UNWANTED", "MALWARE", "SUSPICIOUS", "BLACKLIST", "AV_DETECTED",
)


class ImportPolicy:
    """Which classifications enter ``ioc_file_hashes`` (``TI_IMPORT_CLASSIFICATIONS``), for both feeders.

    A row whose classification is not in the set, or that has none, is filtered by the rule
    ``classification_not_imported``.
    """

    def __init__(self, classifications: Iterable[str]):
        from ti_pipeline.core import schema

        self.classifications = frozenset(classifications)
        unknown = self.classifications - set(schema.FILE_CLASSIFICATIONS)
        if unknown:
            raise ValueError(
                f"TI_IMPORT_CLASSIFICATIONS names {', '.join(sorted(unknown))}, not classification values "
                f"(one of {', '.join(schema.FILE_CLASSIFICATIONS)}, or ALL)"
            )

    @classmethod
    def parse(cls, setting: str | None) -> ImportPolicy:
        """From the setting's text: a comma list of ENUM values, ``ALL``, or empty for the default."""
        text = (setting or "").strip()
        if not text:
            return cls(PRODUCTION_CLASSIFICATIONS)
        if text.upper() == "ALL":
            from ti_pipeline.core import schema

            return cls(schema.FILE_CLASSIFICATIONS)
        return cls(part.strip().upper() for part in text.split(",") if part.strip())

    def admits(self, classification: str | None) -> bool:
        return classification in self.classifications

    def text(self) -> str:
        """The admitted classifications in the ENUM's order: the ``import_classifications`` metadata."""
        from ti_pipeline.core import schema

        return ",".join(c for c in schema.FILE_CLASSIFICATIONS if c in self.classifications)

    def __repr__(self) -> str:
        return f"ImportPolicy({self.text()})"
