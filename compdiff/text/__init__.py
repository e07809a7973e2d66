"""Text towers for text-conditioned generation (:mod:`compdiff.text.encoder`).

:func:`get` returns a tower by the name a training config stores
(``config.model.text_encoder``), loaded once per process: training turns captions into
conditions with it, and sampling encodes each prompt with the same tower.
"""

import functools

from compdiff.text.encoder import (
    INSTALL_COMMAND,
    BertEncoder,
    MiniLM,
    MissingTextEncoderError,
    TextEmbeddings,
    TextEncoder,
    load_minilm,
)

ENCODERS = {"minilm": load_minilm}


@functools.cache
def get(name: str) -> TextEncoder:
    """The text tower ``name`` (one of :data:`ENCODERS`), loaded once."""
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[name]()


__all__ = ["ENCODERS", "INSTALL_COMMAND", "BertEncoder", "MiniLM", "MissingTextEncoderError",
           "TextEmbeddings", "TextEncoder", "get", "load_minilm"]
