"""From a trained method to things other code uses: encoder files and embedding caches."""

from medssl.export.embeddings import EmbedSummary, embed_cache
from medssl.export.encoders import (
    encoder_source,
    export_encoder,
    export_program,
    load_checkpoint,
    load_encoder,
    load_encoder_weights,
)

__all__ = [
    "EmbedSummary",
    "embed_cache",
    "encoder_source",
    "export_encoder",
    "export_program",
    "load_checkpoint",
    "load_encoder",
    "load_encoder_weights",
]
