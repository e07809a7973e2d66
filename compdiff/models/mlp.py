"""The residual MLP of RRR's 2D experiments, ``s_theta(x, t, cond) -> R^d``.

::

    h = Dense(x)
    e = embed(t) [+ embed(cond)]                      # [B, hidden]
    repeat num_blocks:  h = h + Dense(swish(Dense(swish(h)) + Dense(e)))
    s = Dense(swish(h))

No normalization layers: energy parameterizations differentiate the network in
``x`` and train on that gradient, so every layer must be smooth in ``x``
(swish, not ReLU) and the output must depend on the sample alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray

TIME_EMBEDDINGS = ("sinusoidal", "learned")


def sinusoidal_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Transformer embedding of integer levels: ``[cos(t w_k), sin(t w_k)]``, ``w_k`` geometric.

    ``w_k = max_period ** (-k / (dim / 2))``, ``k = 0..dim/2 - 1``; ``t [B] -> [B, dim]``.
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ResidualMLP(nn.Module):
    """``(x [B, d], t [B] or [1] int, cond [B, c] | None) -> [B, dim]``.

    Attributes:
      dim: output dimension (the data dimension).
      hidden: width of every hidden layer and of the embeddings.
      num_blocks: number of residual blocks.
      time_embedding: ``"sinusoidal"`` (fixed features of ``t`` then an MLP) or
        ``"learned"`` (a table over levels ``0..num_levels``).
      num_levels: ``T``; sizes the learned table.
    """

    dim: int
    hidden: int = 128
    num_blocks: int = 4
    time_embedding: str = "sinusoidal"
    num_levels: int = 100

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"unknown time_embedding {self.time_embedding!r}; known: {list(TIME_EMBEDDINGS)}")
        # A single level ([1] or scalar), as in sampling, embeds once and
        # broadcasts: the time path is ~30% of an evaluation's FLOPs.
        t = jnp.asarray(t, jnp.int32).reshape(-1)
        if t.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"t must hold 1 or {x.shape[0]} levels, got shape {t.shape}")
        if self.time_embedding == "learned":
            emb = nn.Embed(self.num_levels + 1, self.hidden, name="time_embed")(t)
        else:
            emb = sinusoidal_embedding(t, self.hidden)
            emb = nn.Dense(self.hidden, name="time_proj")(emb)
        emb = nn.Dense(self.hidden, name="time_out")(nn.swish(emb))
        if cond is not None:
            c = nn.Dense(self.hidden, name="cond_in")(cond.astype(jnp.float32))
            emb = emb + nn.Dense(self.hidden, name="cond_out")(nn.swish(c))

        h = nn.Dense(self.hidden, name="input")(x)
        for i in range(self.num_blocks):
            r = nn.Dense(self.hidden, name=f"block{i}_in")(nn.swish(h))
            r = r + nn.Dense(self.hidden, name=f"block{i}_emb")(emb)
            h = h + nn.Dense(self.hidden, name=f"block{i}_out")(nn.swish(r))
        return nn.Dense(self.dim, name="output")(nn.swish(h))
