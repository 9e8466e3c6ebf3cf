"""Run one worker process: the Faust worker around the app from ``create_app``.

Faust's Worker handles SIGTERM/SIGINT: it stops fetching, stops agents (the current batch
finishes: checkpoint, acks), flushes the producer, commits and exits.
"""

from __future__ import annotations

import logging

from app.factory import create_app
from app.transport import tune_gc
from app.settings import Settings

log = logging.getLogger("riskstream.worker")


def run_worker(settings: Settings, bootstrap: str) -> int:
    import faust

    ra = create_app(settings, bootstrap)
    tune_gc()
    log.info("worker starting: bootstrap=%s app_id=%s web=%s:%s", bootstrap, settings.app_id,
             settings.web_host, settings.web_port)
    worker = faust.Worker(ra.faust_app, loglevel=settings.log_level, quiet=True,
                          override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
