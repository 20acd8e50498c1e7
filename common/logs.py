"""One log pipeline for our structlog events and Kopf's (stdlib) records.

JSON lines when stderr is not a terminal (what log collectors want), readable key=value lines
on a terminal. Context such as the sandbox, namespace and node is bound with structlog's
contextvars, so every line of one reconcile carries it.
"""

import logging
import sys

import structlog


def configure(level: str = "INFO", **context: str) -> None:
    """Routes structlog and stdlib logging (Kopf, aiohttp) through one renderer; ``context``
    (for example ``node=...``) is bound to every line of the process."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderers: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer(colors=False)]
        if sys.stderr.isatty()
        # a JSON line carries the traceback as text (the console renderer prints its own)
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if context:
        structlog.contextvars.bind_contextvars(**context)
