"""The default zero-shot label set (product categories) and prompt templates."""

from __future__ import annotations

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "shoes", "sneakers", "boots", "sandals", "high heels",
    "shirt", "t-shirt", "blouse", "dress", "skirt", "pants", "jeans", "shorts",
    "jacket", "coat", "sweater", "hoodie", "suit", "swimsuit", "socks",
    "handbag", "backpack", "purse", "wallet", "suitcase", "belt",
    "watch", "sunglasses", "jewelry", "necklace", "ring", "earrings", "hat", "scarf", "gloves",
    "smartphone", "laptop", "headphones", "camera", "television",
    "sofa", "chair", "table", "bed", "lamp",
    "toy", "book", "bicycle", "perfume", "cosmetics",
)

# Averaging several phrasings is the standard CLIP zero-shot recipe; it is more robust than
# the bare label. A model may carry its own templates in its store metadata.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a product photo of {}.",
    "a close-up photo of {}.",
    "an image of {}.",
)
