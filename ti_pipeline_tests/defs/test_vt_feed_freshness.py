"""The VT freshness check on a real instance: day D-2 of the export and the load, by the deadline tick."""

from datetime import UTC, datetime

import pytest
from dagster import AssetSelection, DagsterInstance, RunRequest, asset, build_sensor_context, materialize

from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.vt_feed import defs as vt_feed_defs
from ti_pipeline.defs.vt_feed import freshness
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY

EXPORT, LOAD = VT_FILE_REPORTS_KEY, VT_IOC_FILE_HASHES_KEY


# Stand-ins with the real keys and partitions: the check reads only the instance's materializations.
@asset(key=EXPORT, partitions_def=vt_days)
def export_stand_in() -> None:
    return None


@asset(key=LOAD, partitions_def=vt_days, deps=[EXPORT])
def load_stand_in() -> None:
    return None


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


def evaluate(instance: DagsterInstance) -> dict[str, tuple[bool, str]]:
    result = materialize(
        [export_stand_in, load_stand_in, *freshness.freshness_checks],
        selection=AssetSelection.checks(*freshness.freshness_checks),
        instance=instance,
    )
    assert result.success  # a failed check is an ERROR result, not a failed step
    return {
        e.asset_key.to_user_string(): (e.passed, e.metadata["expected_partition"].value)
        for e in result.get_asset_check_evaluations()
    }


def at(hour: int) -> datetime:
    return datetime(2024, 3, 10, hour, 0, tzinfo=UTC)


def test_the_deadline_of_the_default_setting_is_6_utc_and_d_minus_2_is_due():
    assert freshness.DEADLINE_CRON == "0 6 * * *"
    assert freshness.expected_day(at(7))[1] == "2024-03-08"   # after today's 06:00: today - 2
    assert freshness.expected_day(at(5))[1] == "2024-03-07"   # before it: yesterday's deadline, yesterday - 2


def test_fails_without_d_minus_2_and_passes_with_it(instance, monkeypatch):
    monkeypatch.setattr(freshness, "now", lambda: at(7))
    # The days around D-2 but not D-2 itself: still stale.
    assert materialize([export_stand_in, load_stand_in], partition_key="2024-03-07", instance=instance).success
    assert materialize([export_stand_in], partition_key="2024-03-09", instance=instance).success
    assert evaluate(instance) == {
        "vt_feed/vt_file_reports": (False, "2024-03-08"), "vt_feed/ioc_file_hashes": (False, "2024-03-08")
    }
    # The export of D-2 arrives, its load not yet: only the export is fresh.
    assert materialize([export_stand_in], partition_key="2024-03-08", instance=instance).success
    assert evaluate(instance) == {
        "vt_feed/vt_file_reports": (True, "2024-03-08"), "vt_feed/ioc_file_hashes": (False, "2024-03-08")
    }
    assert materialize([export_stand_in, load_stand_in], partition_key="2024-03-08", instance=instance).success
    assert evaluate(instance) == {
        "vt_feed/vt_file_reports": (True, "2024-03-08"), "vt_feed/ioc_file_hashes": (True, "2024-03-08")
    }
    # The next deadline asks for the next day, whose export (only) is there.
    monkeypatch.setattr(freshness, "now", lambda: datetime(2024, 3, 11, 6, 30, tzinfo=UTC))
    assert evaluate(instance) == {
        "vt_feed/vt_file_reports": (True, "2024-03-09"), "vt_feed/ioc_file_hashes": (False, "2024-03-09")
    }


def test_the_sensor_requests_the_checks_that_never_ran(instance):
    sensor = freshness.vt_feed_freshness_sensor
    assert sensor in vt_feed_defs.sensors and freshness.vt_feed_freshness in vt_feed_defs.asset_checks
    request = sensor(build_sensor_context(instance=instance))
    assert isinstance(request, RunRequest)
    assert set(request.asset_check_keys) == {spec.key for spec in freshness.vt_feed_freshness.check_specs}
