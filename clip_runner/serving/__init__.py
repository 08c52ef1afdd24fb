"""The serving side: the routes' logic (:class:`ClipAPI`), the micro-batcher, scoring, and image
fields given as text (base64, ``data:`` URIs, URLs fetched safely). Imports no torch, and nothing
of compiling or training. What ``clip_http`` may use is exported here."""

from .api import ClipAPI, Item, Timings
from .references import FORMS

__all__ = ["FORMS", "ClipAPI", "Item", "Timings"]
