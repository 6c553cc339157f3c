"""Loading exported VT days into ``ioc_file_hashes``: three stagers behind one interface, one merge."""

from ti_pipeline.core.exports import IncompleteExport
from ti_pipeline.vt_feed.load.base import LOADER_NAMES, LoaderError, LoadSettings
from ti_pipeline.vt_feed.load.day import DayLoad, load_day

__all__ = ["LOADER_NAMES", "DayLoad", "IncompleteExport", "LoadSettings", "LoaderError", "load_day"]
