"""A DDPM / ADM-style UNet, ``s_theta(x, t, cond) -> R^(H*W*C)``, on flat image vectors.

Images travel through the code base (samplers, compositions) as flat vectors
``[B, H*W*C]`` so that every sampler works unchanged; the network reshapes them
to NHWC, runs the UNet and flattens its output back. ::

    e = MLP(sinusoidal(t)) [+ MLP(cond.value) or null_embedding]   # [B or 1, 4 * channels]
    h = Conv3x3(x)
    down:   per level: num_res_blocks x (ResBlock [+ Attention]), then a strided Conv3x3
    middle: ResBlock [+ Attention] + ResBlock
    up:     per level: (num_res_blocks + 1) x (concat skip, ResBlock [+ Attention]),
            then nearest x2 + Conv3x3
    s = Conv3x3_zero(SiLU(GroupNorm(h)))

    ResBlock(h, e) = skip(h) + Conv3x3_zero(SiLU(GN(Conv3x3(SiLU(GN(h))) + Dense(SiLU(e)))))

``skip`` is a 1x1 conv where the channel count changes, the identity
elsewhere. Attention blocks (GroupNorm, multi-head self-attention over the
``H' * W'`` positions, zero-initialized output projection, residual) sit after
every ResBlock of a level whose feature-map height is in
``attention_resolutions``, and in the middle when that tuple is non-empty.
The output convs of every ResBlock, of every attention block and of the
network are zero-initialized (ADM; RRR appendix G), so the network outputs
exactly 0 at init.

Energy parameterizations (:mod:`compdiff.models.diffusion`) differentiate the
network in ``x`` and train on that gradient, and take every sample's gradient
from one ``vjp`` over the batch. So every op is smooth (SiLU, GroupNorm with
``var + eps > 0``, softmax; no ReLU) and every output row depends on its own
input row alone (GroupNorm and attention act per sample; no BatchNorm, no
dropout): ``apply`` is a deterministic function of ``(params, x, t, cond)``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from compdiff.models import conditioning
from compdiff.models.conditioning import Conditions
from compdiff.models.mlp import sinusoidal_embedding

Array = jnp.ndarray

GROUPNORM_EPS = 1e-5  # PyTorch's default, which ADM uses
zeros_init = nn.initializers.zeros


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def norm_groups(num_groups: int, channels: int) -> int:
    """The largest divisor of ``channels`` that is at most ``num_groups``."""
    return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


def _group_norm(num_groups: int, channels: int, name: str) -> nn.GroupNorm:
    # The two-pass variance: no cancellation in E[x^2] - E[x]^2 and no clip at 0
    # (whose kink the double backward of energy training would see).
    return nn.GroupNorm(num_groups=norm_groups(num_groups, channels), epsilon=GROUPNORM_EPS,
                        use_fast_variance=False, name=name)


class ResBlock(nn.Module):
    """``skip(h) + Conv_zero(SiLU(GN(Conv(SiLU(GN(h))) + Dense(SiLU(emb)))))``, emb [B or 1, e]."""

    out_channels: int
    num_groups: int

    @nn.compact
    def __call__(self, h: Array, emb: Array) -> Array:
        in_channels = h.shape[-1]
        r = nn.silu(_group_norm(self.num_groups, in_channels, "norm1")(h))
        r = nn.Conv(self.out_channels, (3, 3), padding=1, name="conv1")(r)
        r = r + nn.Dense(self.out_channels, name="emb_proj")(nn.silu(emb))[:, None, None, :]
        r = nn.silu(_group_norm(self.num_groups, self.out_channels, "norm2")(r))
        r = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=zeros_init,
                    name="conv2")(r)
        if in_channels != self.out_channels:
            h = nn.Conv(self.out_channels, (1, 1), name="skip")(h)
        return h + r


class AttentionBlock(nn.Module):
    """``h + Proj_zero(MHSA(GN(h)))`` over the ``H * W`` positions of each sample."""

    num_heads: int
    num_groups: int

    @nn.compact
    def __call__(self, h: Array) -> Array:
        b, height, width, c = h.shape
        head_dim = c // self.num_heads
        a = _group_norm(self.num_groups, c, "norm")(h).reshape(b, height * width, c)
        qkv = nn.Dense(3 * c, name="qkv")(a).reshape(b, height * width, 3, self.num_heads,
                                                      head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = nn.softmax(logits, axis=-1)
        a = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, height * width, c)
        a = nn.Dense(c, kernel_init=zeros_init, name="proj_out")(a)
        return h + a.reshape(h.shape)


class UNet(nn.Module):
    """``(x [B, H*W*C], t [B] or [1] int, cond: Conditions | None) -> [B, H*W*C]``.

    ``t [1]`` is one level for the whole batch (embedded once). ``cond`` is read
    by a conditional network (``cond_dim > 0``); a raw array ``[B, c]`` means
    every condition present. Where ``cond.present`` is False,
    and for every sample when ``cond`` is None, the network uses its learned
    null embedding instead of ``cond.value`` (classifier-free guidance). An
    unconditional network (``cond_dim=0``) takes ``cond=None`` only.

    Attributes:
      image_shape: ``(H, W, C)``.
      num_levels: ``T``, the number of diffusion levels (``t`` in ``1..T``).
      channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
      channel_mult: one multiplier per resolution level; ``H`` and ``W`` must be
        divisible by ``2 ** (len(channel_mult) - 1)``.
      num_res_blocks: ResBlocks per level on the way down (one more on the way up).
      attention_resolutions: feature-map heights whose levels get self-attention;
        each must be one of the heights ``H / 2**i``.
      num_heads: attention heads; must divide the channels of every attended level.
      num_groups: GroupNorm groups, clipped to the largest divisor of each channel count.
      cond_dim: length of ``cond.value``; 0 for an unconditional network.
      remat: rematerialize ResBlocks and attention blocks in the backward pass
        (less memory, same outputs and gradients).
      position_map: when > 0, the first two entries of each condition are an image-plane
        position ``(u, v)`` in ``[0, 1]^2``, also given to the network as an extra input
        channel, a Gaussian bump of this width there (zero for the null condition). A
        small network learns "draw an object here" from it far faster than from the
        embedding alone (``docs/design_notes.md``).
      cond_shift, cond_scale: ``cond_dim`` numbers each, or empty: the network reads
        ``(cond.value - cond_shift) / cond_scale``, conditions standardized by the
        statistics of the training data (``model.standardize_cond``). Adam moves every
        weight of ``cond_in`` by about the learning rate whatever its input's scale, so a
        condition whose informative part is small (text embeddings: unit vectors sharing
        a common direction, spread 0.03 per dimension) is learned that much more slowly.
    """

    image_shape: tuple[int, int, int]
    num_levels: int
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()
    num_heads: int = 4
    num_groups: int = 8
    cond_dim: int = 0
    remat: bool = False
    position_map: float = 0.0
    cond_shift: tuple[float, ...] = ()
    cond_scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # At construction, not first call: a bad config fails where it is built.
        self._check_settings()
        super().__post_init__()

    @property
    def dim(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    @property
    def emb_dim(self) -> int:
        return 4 * self.channels

    def _check_settings(self) -> None:
        if self.position_map < 0 or (self.position_map > 0 and self.cond_dim < 2):
            raise ValueError(f"position_map={self.position_map} must be >= 0, and > 0 needs "
                             f"position conditions (cond_dim >= 2, got {self.cond_dim})")
        for name in ("cond_shift", "cond_scale"):
            stats = getattr(self, name)
            if len(stats) not in (0, self.cond_dim) or len(self.cond_shift) != len(
                    self.cond_scale):
                raise ValueError(f"{name} must hold cond_dim={self.cond_dim} numbers (or none, "
                                 f"with cond_scale and cond_shift alike); got {len(stats)}")
        if any(not s > 0 for s in self.cond_scale):
            raise ValueError("cond_scale must be positive in every entry")

        def positive_int(name: str, v, minimum: int = 1) -> None:
            if not _is_int(v) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")

        shape = tuple(self.image_shape) if isinstance(self.image_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3 or not all(_is_int(s) and s >= 1 for s in shape):
            raise ValueError(f"image_shape must be (H, W, C), three positive integers; got "
                             f"{self.image_shape!r}")
        positive_int("num_levels", self.num_levels)
        positive_int("channels", self.channels)
        positive_int("num_res_blocks", self.num_res_blocks)
        positive_int("num_heads", self.num_heads)
        positive_int("num_groups", self.num_groups)
        positive_int("cond_dim", self.cond_dim, minimum=0)
        mult = self.channel_mult
        if (not isinstance(mult, (tuple, list)) or len(mult) == 0
                or not all(_is_int(m) and m >= 1 for m in mult)):
            raise ValueError(f"channel_mult must be a non-empty tuple of positive integers "
                             f"(one per resolution level); got {mult!r}")
        factor = 2 ** (len(mult) - 1)
        height, width, _ = shape
        if height % factor or width % factor:
            raise ValueError(f"image_shape {shape}: H and W must be divisible by 2**(len("
                             f"channel_mult) - 1) = {factor} (channel_mult={tuple(mult)} "
                             f"halves the image {len(mult) - 1} times)")
        heights = [height // 2**i for i in range(len(mult))]
        for res in self.attention_resolutions:
            if res not in heights:
                raise ValueError(f"attention_resolutions: {res!r} is not a feature-map height "
                                 f"of this UNet; the heights are {heights}")
            attended = self.channels * mult[heights.index(res)]
            if attended % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the {attended} "
                                 f"channels of the attended resolution {res}")
        middle = self.channels * mult[-1]
        if self.attention_resolutions and middle % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the {middle} channels of "
                             f"the middle attention block")

    def _check_inputs(self, x: Array, t: Array, cond) -> Conditions | None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be flat images [B, H*W*C] = [B, {self.dim}] for "
                             f"image_shape {tuple(self.image_shape)}; got shape {x.shape}")
        if t.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"t must hold 1 or {x.shape[0]} levels, got shape {t.shape}")
        if cond is None:
            return None
        if self.cond_dim == 0:
            raise ValueError("cond was given to an unconditional UNet (cond_dim=0); pass "
                             "cond=None or build the network with cond_dim > 0")
        if not isinstance(cond, Conditions):
            # A raw array [B, c] or [c] (the ApplyFn contract): present for every sample.
            value = jnp.asarray(cond)
            if value.ndim not in (1, 2):
                raise ValueError(f"cond must be Conditions, None or condition vectors [B, "
                                 f"cond_dim={self.cond_dim}]; got shape {value.shape}")
            cond = conditioning.given(value)
        if cond.value.shape[-1] != self.cond_dim:
            raise ValueError(f"cond.value must have last dimension cond_dim={self.cond_dim}; "
                             f"got shape {cond.value.shape}")
        if cond.value.ndim == 1 or cond.present.ndim == 0:
            cond = cond.broadcast(x.shape[0])
        if cond.value.shape[0] != x.shape[0] or cond.present.shape != (x.shape[0],):
            raise ValueError(f"cond must hold one condition per sample, value [{x.shape[0]}, "
                             f"{self.cond_dim}] and present [{x.shape[0]}]; got "
                             f"{cond.value.shape} and {cond.present.shape}")
        return cond

    def _embedding(self, t: Array, cond: Conditions | None, batch: int) -> Array:
        emb = sinusoidal_embedding(t, self.channels)
        emb = nn.Dense(self.emb_dim, name="time_in")(emb)
        emb = nn.Dense(self.emb_dim, name="time_out")(nn.silu(emb))  # [1 or B, e]
        if self.cond_dim == 0:
            return emb
        # The condition MLP runs (on zeros) even for cond=None, so that every call,
        # init included, sees the same parameters.
        value = (jnp.zeros((1, self.cond_dim), jnp.float32) if cond is None
                 else cond.value.astype(jnp.float32))
        if self.cond_shift:
            value = ((value - jnp.asarray(self.cond_shift, jnp.float32))
                     / jnp.asarray(self.cond_scale, jnp.float32))
        c = nn.Dense(self.emb_dim, name="cond_in")(value)
        c = nn.Dense(self.emb_dim, name="cond_out")(nn.silu(c))
        null = self.param("null_embedding", nn.initializers.normal(1.0), (self.emb_dim,))
        c = conditioning.embed(cond, jnp.broadcast_to(c, (batch, self.emb_dim)), null)
        return emb + c

    def _position_channel(self, cond: Conditions | None, batch: int) -> Array:
        """``[B, H, W, 1]``: a bump of width ``position_map`` at ``cond.value[:, :2]``, zero
        for the null condition."""
        height, width, _ = self.image_shape
        if cond is None:
            return jnp.zeros((batch, height, width, 1), jnp.float32)
        bumps = conditioning.position_map(cond.value[:, :2].astype(jnp.float32), height, width,
                                          self.position_map)
        return bumps * cond.present[:, None, None, None]

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Conditions | None = None) -> Array:
        x = jnp.asarray(x)
        t = jnp.asarray(t, jnp.int32).reshape(-1)
        cond = self._check_inputs(x, t, cond)
        batch = x.shape[0]
        height, width, c_out = self.image_shape
        emb = self._embedding(t, cond, batch)

        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        attn_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock
        attend = set(self.attention_resolutions)
        groups, heads = self.num_groups, self.num_heads
        last = len(self.channel_mult) - 1

        h = x.reshape(batch, height, width, c_out).astype(jnp.float32)
        if self.position_map > 0:
            h = jnp.concatenate([h, self._position_channel(cond, batch)], axis=-1)
        h = nn.Conv(self.channels, (3, 3), padding=1, name="conv_in")(h)
        skips = [h]
        res = height
        for level, mult in enumerate(self.channel_mult):
            for j in range(self.num_res_blocks):
                h = res_block(self.channels * mult, groups, name=f"down{level}_res{j}")(h, emb)
                if res in attend:
                    h = attn_block(heads, groups, name=f"down{level}_attn{j}")(h)
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, padding=1,
                            name=f"down{level}_downsample")(h)
                skips.append(h)
                res //= 2

        middle = self.channels * self.channel_mult[-1]
        h = res_block(middle, groups, name="mid_res0")(h, emb)
        if attend:
            h = attn_block(heads, groups, name="mid_attn")(h)
        h = res_block(middle, groups, name="mid_res1")(h, emb)

        for level in reversed(range(len(self.channel_mult))):
            out_channels = self.channels * self.channel_mult[level]
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(out_channels, groups, name=f"up{level}_res{j}")(h, emb)
                if res in attend:
                    h = attn_block(heads, groups, name=f"up{level}_attn{j}")(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
                h = nn.Conv(out_channels, (3, 3), padding=1, name=f"up{level}_upsample")(h)
                res *= 2

        h = nn.silu(_group_norm(groups, h.shape[-1], "norm_out")(h))
        h = nn.Conv(c_out, (3, 3), padding=1, kernel_init=zeros_init, name="conv_out")(h)
        return h.reshape(batch, self.dim)
