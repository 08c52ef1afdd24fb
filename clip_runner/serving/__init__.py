"""The serving side (README, "Layers"); what ``clip_http`` may use is exported here."""

from .api import ClipAPI, Item, Timings
from .references import FORMS

__all__ = ["FORMS", "ClipAPI", "Item", "Timings"]
