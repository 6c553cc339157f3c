"""The migration rules, one pure function per Sage collection: a decoded document in, rows out.

Each function takes the document and the ``RuleContext`` of the load (import policy, the time "now"
is) and returns ``(table, row)`` pairs, or raises ``Filtered`` (a named rule drops it on purpose) or
``Rejected`` (it cannot be used, with the reason). Values are read through ``ti_pipeline.core.values``,
the rules both feeders share: old records carry numbers as int32/int64/double or strings, and
strings that are missing or of another type; a value no column can hold as it is rejects its record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from ti_pipeline.core import keys, values
from ti_pipeline.core.values import ImportPolicy, InvalidValue

Rows = list[tuple[str, dict]]

# A rejected record: the same exception the value rules raise, so one ``except`` sends either to the quarantine.
Rejected = InvalidValue

TOKEN_NORMALISERS = {
    "DOMAIN": keys.normalise_domain,
    "IPV4": keys.normalise_ipv4,
    "SHA1": lambda v: keys.normalise_hex(v, "sha1"),
    "MD5": lambda v: keys.normalise_hex(v, "md5"),
    "SHA256": lambda v: keys.normalise_hex(v, "sha256"),
}
FILTER_DATASET_HEADER = "dataset_header"
_LEADING_WORD = re.compile(r"\s*([A-Za-z][A-Za-z_-]*)")
_DOMAIN_RESPONSE = re.compile(r"\s*maliciousClassification\s*=\s*([A-Za-z_]+)\s*$")


class Filtered(Exception):
    """Dropped on purpose by the named rule."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


@dataclass(frozen=True)
class RuleContext:
    """What a rule needs besides the document, fixed for a whole load (and sent to every worker)."""

    policy: ImportPolicy  # which classifications enter ioc_file_hashes
    now: datetime  # naive UTC; a scan date more than a day after it is rejected


def is_dataset_header(doc: dict, collection: str) -> bool:
    """Whether ``doc`` is the collection's dataset header rather than a record.

    Sage keeps one ``DatasetInfo`` document per dataset collection (``version``,
    ``lastUpdateTimestamp``, no ``value``). It is recognised only when both hold: it has no
    ``value.type`` (every record has one) AND it names itself, by an ``_id`` equal to the collection's
    name or a ``_class`` ending in ``.DatasetInfo``. A broken record (a ``TokenRecord`` without a type)
    is therefore still rejected, never filtered as a header.
    """
    value = doc.get("value")
    if isinstance(value, dict) and value.get("type") is not None:
        return False
    kind = doc.get("_class")
    return doc.get("_id") == collection or (isinstance(kind, str) and kind.endswith(".DatasetInfo"))


def file_classification(doc: dict) -> str | None:
    """The ML verdict (``vtClassifierV2Classification.classification``) when present, else the leading
    word of ``response`` (``malware.virus.trojan(14.57,14.35);NONE.null`` -> malware), as the ENUM
    value; None when the document has neither. A word no source uses is rejected."""
    verdict = doc.get("vtClassifierV2Classification")
    word = values.as_text(verdict.get("classification")) if isinstance(verdict, dict) else None
    if word is None:
        response = values.as_text(doc.get("response"))
        if response is None:
            return None
        match = _LEADING_WORD.match(response)
        word = match.group(1) if match else response
    classification = values.classification_of(word)
    if classification is None:
        raise Rejected("unknown_classification")
    return classification


def file_rep(doc: dict, ctx: RuleContext) -> Rows:
    """One ``ioc_file_hashes`` row per VT report whose classification the import policy admits.

    The rules run in this order, so that each count means one thing:
    1. ``value`` missing -> rejected ``missing_value``; ``response_code`` missing or not a number ->
       rejected (``missing_response_code``, ``invalid_number:response_code``);
    2. ``response_code`` != 1 (VT had no report: most of the dump) -> filtered ``response_code_not_1``,
       whatever the classification, so this count does not move with the policy;
    3. classification (``file_classification``): an unknown word -> rejected ``unknown_classification``;
    4. not admitted by the policy, or no classification -> filtered ``classification_not_imported``;
    5. only then the row's values: sha256 (``missing_sha256``, ``invalid_sha256``), numbers, dates and
       text lengths (the ``values`` reasons). A rejection therefore always means a report that would
       have been imported and could not be: documents the policy skips are never counted as rejected.
    """
    report = doc.get("value")
    if not isinstance(report, dict):
        raise Rejected("missing_value")
    code = values.as_int(report.get("response_code"), "response_code")
    if code is None:
        raise Rejected("missing_response_code")
    if code != 1:
        raise Filtered("response_code_not_1")
    classification = file_classification(doc)
    if not ctx.policy.admits(classification):
        raise Filtered(values.FILTER_CLASSIFICATION_NOT_IMPORTED)
    raw_sha256 = report.get("sha256")
    if raw_sha256 is None:
        raise Rejected("missing_sha256")
    sha256 = values.digest_bytes(raw_sha256, "sha256")
    if sha256 is None:
        raise Rejected("invalid_sha256")
    scans = report.get("scans")
    detected = (
        [(engine, entry.get("result")) for engine, entry in scans.items() if isinstance(entry, dict) and entry.get("detected") is True]
        if isinstance(scans, dict)
        else []
    )
    row = {
        "sha256": sha256,
        "sha1": values.digest_bytes(report.get("sha1"), "sha1"),
        "md5": values.digest_bytes(report.get("md5"), "md5"),
        "classification": classification,
        "source": "SAGE_DUMP",
        "detection_names": values.detection_names(detected),
        "scan_date": values.parse_scan_date(report.get("scan_date"), ctx.now),
        "positives": values.int32(report.get("positives"), "positives"),
        "total": values.int32(report.get("total"), "total"),
        "first_seen": values.from_epoch_ms(doc.get("firstSeen"), "firstSeen"),
        "last_seen": values.from_epoch_ms(doc.get("lastUpdate"), "lastUpdate"),
    }
    return [("ioc_file_hashes", values.check_lengths("ioc_file_hashes", row))]


def domain_classification(doc: dict, ctx: RuleContext) -> Rows:
    """Skip ``unknown``; keep ``indifferent`` only with a detected URL (as AV_DETECTED); keep every
    other type, with the highest ``positives`` of its detected URLs. The ``_id`` is checked only for a
    document that would become a row: one the rule skips is filtered, whatever its key."""
    response = doc.get("response")
    match = _DOMAIN_RESPONSE.match(response) if isinstance(response, str) else None
    if match is None:
        raise Rejected("invalid_response")
    kind = match.group(1).lower()
    if kind == "unknown":
        raise Filtered("unknown")
    value = doc.get("value") if isinstance(doc.get("value"), dict) else {}
    urls = value.get("detectedUrls")
    urls = urls if isinstance(urls, list) else []
    positives = [values.int32(url.get("positives"), "positives") for url in urls if isinstance(url, dict)]
    best = max((p for p in positives if p is not None), default=None)
    if kind == "indifferent":
        if not best or best <= 0:
            raise Filtered("indifferent_without_detections")
        classification = "AV_DETECTED"
    else:
        classification = kind.upper()
    domain = keys.normalise_domain(doc.get("_id"))
    if domain is None:
        raise Rejected("invalid_domain")
    row = {
        "domain": domain,
        "classification": classification,
        "source": "SAGE_DUMP",
        "positives": best,
        "detected_urls": len(urls),
        "malicious_type": None,
        "first_seen": values.from_epoch_ms(doc.get("firstSeen"), "firstSeen"),
        "last_seen": values.from_epoch_ms(doc.get("lastUpdate"), "lastUpdate"),
    }
    return [("ioc_domains", values.check_lengths("ioc_domains", row))]


def tokens(doc: dict, ctx: RuleContext) -> Rows:
    """Every valid curated token into ``ioc_tokens``; IPv4 tokens also into ``ioc_ips`` and DOMAIN
    tokens into ``ioc_domains`` (where the TOKENS source outranks the dump, see ``schema.MERGE_RULES``).

    ``response`` is a classification word with an optional ``;SUBTYPE`` (``whitelist;ANTI_VIRUS``): the
    word, lower-case, is ``response``, its ENUM value the overlay's ``classification``, the subtype
    (as given) ``subtype``. Order: the dataset header is filtered (``dataset_header``); then
    ``missing_value``, ``unknown_token_type``, ``missing_response``, ``unknown_classification``,
    ``invalid_token_value:<TYPE>`` (DOMAIN values are normalised first: blanks, a leading ``.`` or
    ``//``), and the column lengths.
    """
    if is_dataset_header(doc, "TOKENS"):
        raise Filtered(FILTER_DATASET_HEADER)
    value = doc.get("value")
    if not isinstance(value, dict):
        raise Rejected("missing_value")
    token_type = values.as_text(value.get("type"))
    token_type = token_type.upper() if token_type else None
    if token_type not in TOKEN_NORMALISERS:
        raise Rejected("unknown_token_type")
    response = values.as_text(doc.get("response"))
    if response is None:
        raise Rejected("missing_response")
    word, _, subtype = response.partition(";")
    word = word.strip().lower()
    classification = values.classification_of(word)
    if classification is None:
        raise Rejected("unknown_classification")
    token = TOKEN_NORMALISERS[token_type](doc.get("_id"))
    if token is None:
        raise Rejected(f"invalid_token_value:{token_type}")
    malicious_type = values.as_text(value.get("maliciousType"))
    link = values.as_text(value.get("link"))
    token_row = {
        "token": token,
        "token_type": token_type,
        "response": word,
        "subtype": subtype.strip() or None,
        "malicious_type": malicious_type,
        "source": values.as_text(value.get("source")),
        "link": link,
    }
    rows: Rows = [("ioc_tokens", token_row)]
    overlay = {"classification": classification, "source": "TOKENS", "malicious_type": malicious_type}
    if token_type == "IPV4":
        rows.append(("ioc_ips", {"address": token, **overlay, "link": link}))
    elif token_type == "DOMAIN":
        rows.append(
            (
                "ioc_domains",
                {"domain": token, **overlay, "positives": None, "detected_urls": None, "first_seen": None, "last_seen": None},
            )
        )
    return [(table, values.check_lengths(table, row)) for table, row in rows]


def file_extension_classification(doc: dict, ctx: RuleContext) -> Rows:
    """One row per extension (key lower-case, without its dot); the dataset header is filtered."""
    if is_dataset_header(doc, "FILE_EXTENSION_CLASSIFICATION"):
        raise Filtered(FILTER_DATASET_HEADER)
    key = doc.get("_id")
    extension = values.as_text(key.get("extension")) if isinstance(key, dict) else None
    if extension is None:
        raise Rejected("missing_extension")
    extension = extension.lstrip(".").lower()
    if not extension:
        raise Rejected("invalid_extension")
    value = doc.get("value")
    kind = values.as_text(value.get("type")) if isinstance(value, dict) else None
    if kind is None:
        raise Rejected("missing_type")
    sources = value.get("sources")
    row = {
        "extension": extension,
        "type": kind.upper(),
        "description": values.as_text(value.get("description")),
        "sources": json.dumps(sources, sort_keys=True, default=str) if sources is not None else None,
    }
    return [("file_extension_classification", values.check_lengths("file_extension_classification", row))]


RULES = {
    "file_rep": file_rep,
    "domain_classification": domain_classification,
    "TOKENS": tokens,
    "FILE_EXTENSION_CLASSIFICATION": file_extension_classification,
}
