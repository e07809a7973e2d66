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
- ``num_levels > 0``: the classifier is noise-conditional, ``p(y | x_t, t)`` (a
  sinusoidal embedding of ``t`` added in every block), for classifier guidance.
- ``features=True`` returns the penultimate layer instead of the logits: the
  feature space of :mod:`compdiff.image_metrics` (Frechet distance, precision/recall).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from compdiff.models.conditioning import Conditions, position_map
from compdiff.models.mlp import sinusoidal_embedding
from compdiff.models.unet import norm_groups

Array = jnp.ndarray
QUERIES = ("none", "position")


class ImageClassifier(nn.Module):
    image_shape: tuple[int, int, int]
    num_outputs: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    query: str = "none"
    query_width: float = 0.05
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
            for _ in range(2):
                hidden = nn.Conv(ch, (3, 3))(hidden)
                if emb is not None:
                    hidden = hidden + nn.Dense(ch)(emb)[:, None, None, :]
                hidden = nn.silu(nn.GroupNorm(num_groups=norm_groups(self.num_groups, ch))(hidden))
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
