"""The ti_pipeline code location: each domain's Definitions, the scale-out job variants, the resources
read from the environment, and the local multiprocess executor; every asset references its code."""

from dagster import Definitions, multiprocess_executor

from ti_pipeline.defs import sage_dump, scale_out, submissions, threat_actors, vt_feed
from ti_pipeline.defs.metadata import with_code_references
from ti_pipeline.defs.resources import build_resources

defs = with_code_references(Definitions.merge(
    sage_dump.defs,
    vt_feed.defs,
    threat_actors.defs,
    submissions.defs,
    Definitions(jobs=scale_out.jobs, resources=build_resources(), executor=multiprocess_executor),
))
