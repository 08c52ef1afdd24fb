"""Client for the clip service: OpenCLIP image and text embeddings over HTTP.

``ClipClient`` (blocking) and ``AsyncClipClient`` call every route of the service; ``CLIPEmbedder``
is the file-in, vector-out API; ``from_env()`` picks a running service (``USE_LOCAL_CLIP=true``)
or, with the full clip-service install, the model in this process.
"""

from .embedder import CLIPEmbedder
from .env import ClientSettings, async_from_env, from_env
from .http import (
    AnalyzeItemError,
    AnalyzeResult,
    AsyncClipClient,
    ClassifyResult,
    ClipClient,
    ClipConnectionError,
    ClipServiceError,
    EncodedImages,
    Health,
    ImageInput,
    Prediction,
    RetryPolicy,
    SimilarityItem,
    SimilarityResult,
)

__all__ = [
    "AnalyzeItemError", "AnalyzeResult", "AsyncClipClient", "CLIPEmbedder", "ClassifyResult", "ClientSettings",
    "ClipClient", "ClipConnectionError", "ClipServiceError", "EncodedImages", "Health", "ImageInput", "Prediction",
    "RetryPolicy", "SimilarityItem", "SimilarityResult", "async_from_env", "from_env",
]
