from ti_pipeline.core.accounting import Accounting


def test_balance_and_flat_counts():
    a = Accounting(read=9, written=6)
    a.filter("positives_zero", 2)
    a.reject("invalid_sha256")
    b = Accounting(read=1)
    b.reject("torn_document")
    b.figures["packages_missing"] = 3
    a.merge(b)
    assert a.unaccounted == 0
    assert a.as_dict() == {
        "read": 10, "written": 6, "filtered": 2, "rejected": 2, "unaccounted": 0,
        "filtered.positives_zero": 2, "rejected.invalid_sha256": 1, "rejected.torn_document": 1,
        "packages_missing": 3,
    }


def test_unaccounted_records_show():
    assert Accounting(read=5, written=3).unaccounted == 2
