"""Text towers for text-conditioned generation (:mod:`compdiff.text.encoder`)."""

from compdiff.text.encoder import (
    INSTALL_COMMAND,
    BertEncoder,
    MiniLM,
    MissingTextEncoderError,
    TextEmbeddings,
    TextEncoder,
    load_minilm,
)

__all__ = ["INSTALL_COMMAND", "BertEncoder", "MiniLM", "MissingTextEncoderError",
           "TextEmbeddings", "TextEncoder", "load_minilm"]
