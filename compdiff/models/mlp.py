"""The residual MLP of RRR's 2D experiments, ``s_theta(x, t, cond) -> R^d``.

::

    h = Dense(x)                                      # [B, hidden]
    e = embed(t) [+ embed(cond)]                      # [B, hidden]
    repeat num_blocks:
        r = Dense_w(swish(N(h))) + Dense_w(e)         # [B, widen * hidden]
        h = h + Dense(swish(r))                       # [B, hidden]
    s = Dense(swish(h))

``N`` is the identity (``norm="none"``, the default) or a LayerNorm over the
features (``norm="layernorm"``)::

    N(h) = gamma * (h - mean(h)) / sqrt(var(h) + eps) + beta,   mean, var over the hidden axis

Energy parameterizations differentiate the network in ``x`` and train on that
gradient (a double backward), so every layer must be smooth in ``x`` (swish,
not ReLU) and the output must depend on the sample alone. LayerNorm meets
both: ``var(h) + eps >= eps > 0`` makes it infinitely differentiable in ``h``,
and it normalizes each row over its own features (BatchNorm, which mixes rows,
would break the per-row gradients of one ``vjp`` in
:func:`compdiff.models.diffusion.predict`). Smooth is not gentle, though: its
Jacobian scales like ``1 / sqrt(var(h) + eps)``, and the first block's input
``h = W x + b`` has zero feature variance wherever ``W x + b`` is a constant
vector. With ``hidden >> d`` that needs ``b`` in the span of ``W`` and ``1``,
which the zero bias init gives at ``x = 0``: at init ``var(h) ~ |x|^2``, the
network depends on ``x`` mostly through ``x / |x|``, and ``grad_x E`` varies on
the length scale ``|x|``, up to ``~1 / sqrt(eps)`` steep at the origin. RRR's
network has the same property, and training need not remove it: 600 steps on
the ring (``energy_dae``, widen 2) left ``min_x var(h) ~ 2e-4`` near ``x = 0``
and ``||d eps_hat / dx|| ~ 300`` there at level 1 (about 5 without the norm).

The defaults (``widen=1``, ``norm="none"``) are the network this module
always had: the same parameter names, shapes and outputs. RRR's 2D network is
``hidden=128, num_blocks=4, widen=2, norm="layernorm"`` (``configs/models/toy2d.py``:
``--config.model.widen=2 --config.model.norm=layernorm``); their block also
has a third inner ``Dense_w`` layer, zero-initialized output layers, no swish
before the output and a 32-wide time embedding, which this module does not
reproduce.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from compdiff.models.conditioning import Conditions

Array = jnp.ndarray

TIME_EMBEDDINGS = ("sinusoidal", "learned")
NORMS = ("none", "layernorm")
LAYERNORM_EPS = 1e-5  # Haiku's default, which RRR's 2D network uses


def check_architecture(widen: int, norm: str) -> None:
    """Raise ``ValueError`` unless ``widen`` is an integer >= 1 and ``norm`` is in :data:`NORMS`."""
    # bool is an int subclass; True would silently mean widen=1.
    if not isinstance(widen, int) or isinstance(widen, bool) or widen < 1:
        raise ValueError(f"widen (config model.widen) must be an integer >= 1: the inner width "
                         f"of each residual block is widen * hidden; got {widen!r}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm (config model.norm) {norm!r}; known: {list(NORMS)}")


def sinusoidal_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Transformer embedding of integer levels: ``[cos(t w_k), sin(t w_k)]``, ``w_k`` geometric.

    ``w_k = max_period ** (-k / (dim / 2))``, ``k = 0..dim/2 - 1``; ``t [B] -> [B, dim]``.
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ResidualMLP(nn.Module):
    """``(x [B, d], t [B] or [1] int, cond: Conditions | [B, c] | None) -> [B, dim]``.

    ``cond`` as :class:`~compdiff.models.conditioning.Conditions` uses a learned
    null embedding where ``present`` is False (classifier-free guidance).

    Attributes:
      dim: output dimension (the data dimension).
      hidden: width of every hidden layer and of the embeddings.
      num_blocks: number of residual blocks.
      widen: each block's inner layer has ``widen * hidden`` units (RRR: 2).
      norm: ``"none"`` or ``"layernorm"`` (pre-norm at the start of each block, RRR's).
      time_embedding: ``"sinusoidal"`` (fixed features of ``t`` then an MLP) or
        ``"learned"`` (a table over levels ``0..num_levels``).
      num_levels: ``T``; sizes the learned table.
    """

    dim: int
    hidden: int = 128
    num_blocks: int = 4
    time_embedding: str = "sinusoidal"
    num_levels: int = 100
    widen: int = 1
    norm: str = "none"

    def __post_init__(self) -> None:
        # At construction, not first call: a bad config fails where it is built.
        check_architecture(self.widen, self.norm)
        super().__post_init__()

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
        if isinstance(cond, Conditions):  # a learned null embedding where absent
            c = nn.Dense(self.hidden, name="cond_in")(cond.value.astype(jnp.float32))
            c = nn.Dense(self.hidden, name="cond_out")(nn.swish(c))
            null = self.param("null_embedding", nn.initializers.normal(0.02), (self.hidden,))
            emb = emb + jnp.where(cond.present[:, None], c, null)
        elif cond is not None:
            c = nn.Dense(self.hidden, name="cond_in")(cond.astype(jnp.float32))
            emb = emb + nn.Dense(self.hidden, name="cond_out")(nn.swish(c))

        inner = self.widen * self.hidden
        h = nn.Dense(self.hidden, name="input")(x)
        for i in range(self.num_blocks):
            # norm="none" adds no parameters, so default trees match older checkpoints.
            hn = (nn.LayerNorm(epsilon=LAYERNORM_EPS, name=f"block{i}_norm")(h)
                  if self.norm == "layernorm" else h)
            r = nn.Dense(inner, name=f"block{i}_in")(nn.swish(hn))
            r = r + nn.Dense(inner, name=f"block{i}_emb")(emb)
            h = h + nn.Dense(self.hidden, name=f"block{i}_out")(nn.swish(r))
        return nn.Dense(self.dim, name="output")(nn.swish(h))
