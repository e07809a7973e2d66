"""A convolutional image classifier, optionally queried at a position and noise-conditional.

``(x [B, H*W*C], t [B] or [1] int | None, cond: Conditions | [B, c] | None) -> logits
[B, num_outputs]``, the same call signature as the diffusion networks, so one
training loop and one checkpoint format serve both.

- ``query="position"``: ``cond`` holds a query position ``(u, v)`` in ``[0, 1]^2``
  (the convention of :mod:`compdiff.data.render`), given to the network as an extra
  input channel, a Gaussian bump of width ``query_width`` centred there. A
  convolution then compares the image and the query where they overlap, which is
  what "is an object centred here?" needs (RRR's CLEVR evaluation classifier);
  appending the two numbers to pooled features would have to learn that map.
- ``query="vector"``: ``cond`` holds a concept vector ``[B, query_dim]`` (for
  :func:`compdiff.data.examples.concept_presence`: a one-hot shape (3) then a one-hot
  colour (4), ``query_dim = 7``), "is this concept in the image?". It is embedded by a
  Dense layer and modulates the feature maps of every block (FiLM: ``h * (1 + scale) +
  shift``, per channel), before the spatial pooling. Concatenating it with the pooled
  features instead would ask the head to bind attributes after pooling has mixed the
  objects: an image of a red sphere and a blue cube pools to "red, blue, sphere, cube"
  whichever object is which, so "a red cube?" cannot be told from it. FiLM at each
  resolution lets the convolutions look for the queried conjunction where an object is,
  so the pooled features already say whether it was found. Its layers are created only
  for this query (explicitly named ``query_embed`` and ``film_<level>_<block>``), so
  classifiers of the other queries keep their parameter names and checkpoints.
- ``num_levels > 0``: the classifier is noise-conditional, ``p(y | x_t, t)`` (a
  sinusoidal embedding of ``t`` added in every block), for classifier guidance.
- ``features=True`` returns the penultimate layer instead of the logits: the
  feature space of :mod:`compdiff.evaluation.image_metrics` (Frechet distance, precision/recall).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from compdiff.models.conditioning import Conditions, position_map
from compdiff.models.mlp import sinusoidal_embedding
from compdiff.models.unet import norm_groups

Array = jnp.ndarray
QUERIES = ("none", "position", "vector")


class ImageClassifier(nn.Module):
    image_shape: tuple[int, int, int]
    num_outputs: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    query: str = "none"
    query_width: float = 0.05
    query_dim: int = 7  # query="vector": length of the concept vectors
    num_levels: int = 0  # > 0: noise-conditional, reads t
    num_groups: int = 8

    @property
    def dim(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    @nn.compact
    def __call__(self, x: Array, t: Array | None = None, cond: Conditions | Array | None = None,
                 *, features: bool = False) -> Array:
        """Logits ``[B, num_outputs]``; ``features=True``: penultimate layer ``[B, 4 * channels]``.

        The features are the activations the final dense layer reads. Returning
        them skips only that last layer, so the parameters are the same either way
        (``module.apply({"params": p}, x, t, features=True)``).
        """
        if self.query not in QUERIES:
            raise ValueError(f"unknown classifier query {self.query!r}; known: {QUERIES}")
        h, w, c = self.image_shape
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"classifier input must be [B, {self.dim}] (flat {h}x{w}x{c} "
                             f"images), got shape {x.shape}")
        img = x.reshape(-1, h, w, c)
        if self.query == "position":
            if cond is None:
                raise ValueError("a position-query classifier needs the query positions (cond)")
            positions = cond.value if isinstance(cond, Conditions) else cond
            img = jnp.concatenate([img, position_map(positions, h, w, self.query_width)], -1)
        film = None
        if self.query == "vector":
            queries = self._query_vectors(cond, img.shape[0])
            film = nn.silu(nn.Dense(4 * self.channels, name="query_embed")(queries))
        emb = None
        if self.num_levels > 0:
            if t is None:
                raise ValueError("a noise-conditional classifier needs the level t")
            t = jnp.asarray(t, jnp.int32).reshape(-1)
            emb = nn.Dense(4 * self.channels)(sinusoidal_embedding(t, self.channels))
            emb = nn.silu(emb)
        hidden = img
        for level, mult in enumerate(self.channel_mult):
            ch = self.channels * mult
            for block in range(2):
                hidden = nn.Conv(ch, (3, 3))(hidden)
                if emb is not None:
                    hidden = hidden + nn.Dense(ch)(emb)[:, None, None, :]
                hidden = nn.GroupNorm(num_groups=norm_groups(self.num_groups, ch))(hidden)
                if film is not None:  # after the norm, which would otherwise undo the scale
                    scale, shift = jnp.split(
                        nn.Dense(2 * ch, name=f"film_{level}_{block}")(film)[:, None, None, :],
                        2, axis=-1)
                    hidden = hidden * (1.0 + scale) + shift
                hidden = nn.silu(hidden)
            if level < len(self.channel_mult) - 1:
                hidden = nn.Conv(ch, (3, 3), strides=(2, 2))(hidden)
        pooled = jnp.mean(hidden, axis=(1, 2))
        # The head is created before the hidden layer, as it was before `features` existed:
        # Linen names layers in creation order, so checkpoints written then still restore.
        head = nn.Dense(self.num_outputs)
        penultimate = nn.silu(nn.Dense(4 * self.channels)(pooled))
        if features:
            return penultimate
        return head(penultimate)

    def _query_vectors(self, cond: Conditions | Array | None, batch: int) -> Array:
        """The concept vectors ``[batch, query_dim]`` of ``cond`` (query="vector")."""
        if cond is None:
            if self.is_initializing():  # the training loop initializes without conditions
                return jnp.zeros((batch, self.query_dim), jnp.float32)
            raise ValueError("a vector-query classifier needs the query vectors (cond)")
        queries = jnp.asarray(cond.value if isinstance(cond, Conditions) else cond, jnp.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.shape[-1] != self.query_dim:
            raise ValueError(f"query vectors must have length {self.query_dim}, got shape "
                             f"{queries.shape}")
        return jnp.broadcast_to(queries, (batch, self.query_dim))
