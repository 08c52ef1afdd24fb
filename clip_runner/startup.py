"""Start-up, in its one order: settings → model selection → runtime choice → warm-up → serving.

:func:`serve` is what a worker (``service.py``) and the in-process app (``clip_http.local``) call.
It logs one line saying what serves, where, how and why. Importing it loads no torch: a runtime
library is imported only once the runtime choice picks it.
"""

from __future__ import annotations

import logging

from .runtimes.choice import choose_runtime
from .serving import ClipAPI
from .serving.served_model import ServedModel
from .settings import ClipSettings
from .store.selection import select_model

logger = logging.getLogger(__name__)


def serve(settings: ClipSettings) -> ClipAPI:
    """Select (registering if needed), load and warm up the configured model, and serve it."""
    threads = settings.inference_thread_count
    selection = select_model(settings)
    encoder, choice = choose_runtime(selection.tag, settings, threads)
    encoder.warm_up()  # the first call pays for lazy initialisation: not a caller's
    facts = encoder.describe()  # the start-up log's one line: what serves, where, how and why
    logger.info("serving %s with %s at %s on %s (%d threads); model: %s; runtime: %s", encoder.entry.tag,
                facts["runtime"], facts["precision"], facts["device_name"], threads, selection.reason, choice.reason)
    return ClipAPI(ServedModel(selection, encoder, threads, choice), settings)
