"""Alembic's environment: runs on the connection the caller put in ``config.attributes``, or, without
one, renders the SQL for ``dialect_name`` (``ti-pipeline schema``). See ``ti_pipeline.core.migrations``."""

from alembic import context

from ti_pipeline.core.migrations import context_options

attributes = context.config.attributes
if context.is_offline_mode():
    context.configure(dialect_name=attributes["dialect_name"], literal_binds=True, **context_options())
else:
    context.configure(connection=attributes["connection"], **context_options())
with context.begin_transaction():
    context.run_migrations()
