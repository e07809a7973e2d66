"""Composition on a discrete space: Metropolis-Hastings with a learned proposal (Du & Kaelbling
2024, section 5.3), Gibbs and local-flip baselines, and a learned autoregressive proposal.

States are binary strings ``x in {0, 1}^L`` (``[B, L]`` arrays of 0/1). A target is given by
its unnormalized log-density ``log p~(x)`` (:data:`LogDensity`, batched), e.g. the composition
``log p~(x) = log q(x) - E_1(x) - E_2(x)``.

Independence Metropolis-Hastings (:func:`independence_mh_kernel`). A proposal ``q_theta``
(here a generative model trained on samples of one factor, ``q e^{-E_1}``) proposes
``x' ~ q_theta`` independently of the current ``x``; the move is accepted with

    a(x -> x') = min(1, [p~(x') q_theta(x)] / [p~(x) q_theta(x')]),

which satisfies detailed balance ``p(x) q_theta(x') a(x -> x') = p(x') q_theta(x) a(x' -> x)``,
so ``p`` is stationary whatever ``q_theta`` is (and the chain is ergodic where ``q_theta > 0``
on the support of ``p``). Du & Kaelbling's acceptance ``clip(e^{E_2(x) - E_2(x')}, 0, 1)`` is
this ratio when ``q_theta = q e^{-E_1} / Z_1`` exactly; with a learned ``q_theta`` it is the
exact MH acceptance for the target ``q_theta e^{-E_2}`` instead, which is what it samples
(pass ``log_target = log q_theta - E_2`` to see it).

Baselines, both with one target evaluation per step:

* Gibbs (:func:`gibbs_kernel`): systematic-scan single-site heat bath. Step ``n`` resamples
  bit ``i = n mod L`` from its exact conditional, ``P(x_i = 1 - x_i | x_-i) =
  sigmoid(log p~(x^flip) - log p~(x))``; the current ``log p~(x)`` is cached.
* Local-flip MH (:func:`local_flip_kernel`): flip one uniformly chosen bit, accept with
  ``min(1, p~(x') / p~(x))`` (a symmetric proposal).

Every kernel is ``kernel(state, key, n) -> (state, accept_prob)`` over a batch of chains and
:func:`run_chains` scans it (``lax.scan``), recording the chains' states as integers
(:func:`state_index`) every ``record_every`` steps.

The proposal model (:class:`AutoregressiveBits`): ``q_theta(x) = prod_i Bernoulli(x_i;
sigmoid(f_i(x_<i)))`` with ``f_i(x_<i) = w2_i . tanh(W1_i x_<i + b1_i) + b2_i``, one hidden
layer per bit (``W1_i`` reads only the bits before ``i``: a mask), so ``log q_theta`` is exact
and normalized and sampling is ``L`` sequential Bernoulli draws.
:func:`fit_autoregressive` fits it by maximum likelihood (Adam, :mod:`optax`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jnp.ndarray
LogDensity = Callable[[Array], Array]  # [B, L] bits -> [B] unnormalized log-density


# --- the state space --------------------------------------------------------------------------
def all_states(length: int) -> Array:
    """Every binary string of ``length`` bits, ``[2^L, L]``, row ``k`` is ``k`` in binary
    (most significant bit first), so ``state_index(all_states(L)) == arange(2^L)``."""
    if not 1 <= length <= 24:
        raise ValueError(f"length must be in [1, 24] to enumerate 2^length states, got {length}")
    k = np.arange(2 ** length)[:, None]
    shifts = np.arange(length - 1, -1, -1)[None, :]
    return jnp.asarray((k >> shifts) & 1, jnp.int32)


def state_index(x: Array) -> Array:
    """The integer ``sum_i x_i 2^(L-1-i)`` of each row of ``x`` ``[B, L]``."""
    length = x.shape[-1]
    return jnp.sum(x.astype(jnp.int32) << jnp.arange(length - 1, -1, -1), axis=-1)


def exact_distribution(log_target: LogDensity, length: int) -> Array:
    """``p(x)`` on every state of :func:`all_states` (normalized by enumeration), ``[2^L]``."""
    return jax.nn.softmax(log_target(all_states(length)))


def total_variation(counts, p) -> np.ndarray:
    """``0.5 sum_x |counts(x) / n - p(x)|`` per row of ``counts`` ``[..., 2^L]`` (numpy)."""
    counts, p = np.asarray(counts, np.float64), np.asarray(p, np.float64)
    empirical = counts / np.sum(counts, axis=-1, keepdims=True)
    return 0.5 * np.sum(np.abs(empirical - p), axis=-1)


def state_counts(indices, num_states: int) -> np.ndarray:
    """Histogram of each row of state indices ``[R, C]`` -> ``[R, num_states]`` (numpy)."""
    indices = np.asarray(indices)
    return np.stack([np.bincount(row, minlength=num_states) for row in indices]).astype(
        np.float64)


# --- kernels ----------------------------------------------------------------------------------
class ChainState(NamedTuple):
    """Chains ``x`` ``[C, L]``, their cached ``log p~(x)`` and (independence MH) ``log q(x)``."""

    x: Array
    log_target: Array
    log_proposal: Array


def init_state(log_target: LogDensity, x: Array,
               proposal_log_prob: LogDensity | None = None) -> ChainState:
    """The cached state of chains ``x`` (one target evaluation per chain)."""
    log_q = jnp.zeros(x.shape[:1]) if proposal_log_prob is None else proposal_log_prob(x)
    return ChainState(x=x, log_target=log_target(x), log_proposal=log_q)


def mh_log_ratio(log_target_new: Array, log_target_old: Array, log_q_new: Array,
                 log_q_old: Array) -> Array:
    """``log [p~(x') q(x)] / [p~(x) q(x')]`` of an independence proposal ``x' ~ q``; -inf
    where the proposal has zero target mass."""
    return (log_target_new - log_target_old) + (log_q_old - log_q_new)


def _accept(key: Array, log_ratio: Array) -> tuple[Array, Array]:
    prob = jnp.exp(jnp.minimum(jnp.nan_to_num(log_ratio, nan=-jnp.inf), 0.0))
    return jax.random.uniform(key, prob.shape) < prob, prob


Kernel = Callable[[ChainState, Array, Array], tuple[ChainState, Array]]


def independence_mh_kernel(log_target: LogDensity,
                           proposal_sample: Callable[[Array, int], Array],
                           proposal_log_prob: LogDensity) -> Kernel:
    """Independence MH toward ``log_target`` with proposals ``proposal_sample(key, num)`` of
    log-probability ``proposal_log_prob`` (normalized or not: only ratios enter)."""

    def kernel(state: ChainState, key: Array, n: Array) -> tuple[ChainState, Array]:
        del n
        k_prop, k_acc = jax.random.split(key)
        x_new = proposal_sample(k_prop, state.x.shape[0]).astype(state.x.dtype)
        lt_new, lq_new = log_target(x_new), proposal_log_prob(x_new)
        accept, prob = _accept(k_acc, mh_log_ratio(lt_new, state.log_target, lq_new,
                                                   state.log_proposal))
        keep = lambda new, old: jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)),  # noqa: E731
                                          new, old)
        return ChainState(x=keep(x_new, state.x), log_target=keep(lt_new, state.log_target),
                          log_proposal=keep(lq_new, state.log_proposal)), prob

    return kernel


def _flip(x: Array, site: Array) -> Array:
    """``x`` with bit ``site[c]`` of each chain ``c`` flipped."""
    return x ^ jax.nn.one_hot(site, x.shape[1], dtype=x.dtype)


def gibbs_kernel(log_target: LogDensity) -> Kernel:
    """Systematic-scan Gibbs: step ``n`` resamples bit ``n mod L`` from its exact conditional."""

    def kernel(state: ChainState, key: Array, n: Array) -> tuple[ChainState, Array]:
        site = jnp.full(state.x.shape[:1], n % state.x.shape[1])
        flipped = _flip(state.x, site)
        lt_flip = log_target(flipped)
        prob = jax.nn.sigmoid(lt_flip - state.log_target)  # P(x_i <- 1 - x_i | x_-i)
        prob = jnp.nan_to_num(prob, nan=0.0)
        flip = jax.random.uniform(key, prob.shape) < prob
        return state._replace(x=jnp.where(flip[:, None], flipped, state.x),
                              log_target=jnp.where(flip, lt_flip, state.log_target)), prob

    return kernel


def local_flip_kernel(log_target: LogDensity) -> Kernel:
    """Metropolis with a uniformly chosen single-bit flip as the (symmetric) proposal."""

    def kernel(state: ChainState, key: Array, n: Array) -> tuple[ChainState, Array]:
        del n
        k_site, k_acc = jax.random.split(key)
        site = jax.random.randint(k_site, state.x.shape[:1], 0, state.x.shape[1])
        flipped = _flip(state.x, site)
        lt_flip = log_target(flipped)
        accept, prob = _accept(k_acc, lt_flip - state.log_target)
        return state._replace(x=jnp.where(accept[:, None], flipped, state.x),
                              log_target=jnp.where(accept, lt_flip, state.log_target)), prob

    return kernel


def run_chains(kernel: Kernel, state: ChainState, key: Array, num_records: int,
               record_every: int) -> tuple[Array, Array]:
    """``num_records * record_every`` kernel steps; returns the state indices ``[R, C]`` after
    every ``record_every`` steps and the mean acceptance per record ``[R]``."""

    def record(state, r):
        def step(state, k):
            n = r * record_every + k
            state, prob = kernel(state, jax.random.fold_in(key, n), n)
            return state, jnp.mean(prob)

        state, probs = jax.lax.scan(step, state, jnp.arange(record_every))
        return state, (state_index(state.x), jnp.mean(probs))

    _, (indices, accept) = jax.lax.scan(record, state, jnp.arange(num_records))
    return indices, accept


def independence_mh_transition_matrix(log_target: Array, log_proposal: Array) -> Array:
    """The exact transition matrix ``P[x, x']`` of independence MH over enumerated states
    (``log_target``, ``log_proposal`` ``[S]``, the proposal normalized), from
    :func:`mh_log_ratio`: ``P[x, x'] = q(x') a(x -> x')`` off the diagonal, the rest stays."""
    ratio = mh_log_ratio(log_target[None, :], log_target[:, None], log_proposal[None, :],
                         log_proposal[:, None])
    moves = jnp.exp(log_proposal)[None, :] * jnp.exp(jnp.minimum(ratio, 0.0))
    moves = moves * (1.0 - jnp.eye(log_target.shape[0]))
    return moves + jnp.diag(1.0 - jnp.sum(moves, axis=1))


# --- the learned proposal ---------------------------------------------------------------------
@flax.struct.dataclass
class AutoregressiveBits:
    """``q_theta(x) = prod_i Bernoulli(x_i; sigmoid(f_i(x_<i)))``, one tanh layer per bit."""

    w1: Array  # [L, L, H]: w1[i, j] feeds bit j into bit i's hidden layer (j < i only)
    b1: Array  # [L, H]
    w2: Array  # [L, H]
    b2: Array  # [L]

    @staticmethod
    def init(key: Array, length: int, hidden: int) -> AutoregressiveBits:
        k1, k2 = jax.random.split(key)
        return AutoregressiveBits(
            w1=jax.random.normal(k1, (length, length, hidden)) / np.sqrt(max(length, 1)),
            b1=jnp.zeros((length, hidden)),
            w2=jax.random.normal(k2, (length, hidden)) / np.sqrt(hidden),
            b2=jnp.zeros((length,)))

    @property
    def length(self) -> int:
        return self.b2.shape[0]

    def _mask(self) -> Array:
        return jnp.tril(jnp.ones((self.length, self.length)), -1)[:, :, None]

    def logits(self, x: Array) -> Array:
        """``f_i(x_<i)`` for every bit, ``[B, L]``."""
        h = jnp.tanh(jnp.einsum("bj,ijh->bih", x.astype(jnp.float32), self.w1 * self._mask())
                     + self.b1)
        return jnp.einsum("bih,ih->bi", h, self.w2) + self.b2

    def log_prob(self, x: Array) -> Array:
        """``log q_theta(x)`` ``[B]`` (normalized)."""
        logits = self.logits(x)
        x = x.astype(jnp.float32)
        return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits),
                       axis=-1)

    def sample(self, key: Array, num: int) -> Array:
        """``num`` strings ``[num, L]`` (int32), bit by bit."""
        w1 = self.w1 * self._mask()
        u = jax.random.uniform(key, (num, self.length))

        def bit(i, x):
            h = jnp.tanh(x.astype(jnp.float32) @ w1[i] + self.b1[i])
            logit = h @ self.w2[i] + self.b2[i]
            return x.at[:, i].set((u[:, i] < jax.nn.sigmoid(logit)).astype(jnp.int32))

        return jax.lax.fori_loop(0, self.length, bit, jnp.zeros((num, self.length), jnp.int32))


def fit_autoregressive(key: Array, data: Array, *, hidden: int = 64, steps: int = 2000,
                       batch_size: int = 256, lr: float = 3e-3
                       ) -> tuple[AutoregressiveBits, Array]:
    """Maximum-likelihood :class:`AutoregressiveBits` on ``data`` ``[N, L]`` (Adam on
    minibatches drawn with replacement); returns the model and the loss (mean negative
    log-likelihood, nats) per step."""
    data = jnp.asarray(data, jnp.int32)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"data must be [N, L] binary strings, got shape {data.shape}")
    if steps < 1 or batch_size < 1 or hidden < 1:
        raise ValueError(f"steps, batch_size and hidden must be positive, got {steps}, "
                         f"{batch_size}, {hidden}")
    k_init, k_batch = jax.random.split(key)
    model = AutoregressiveBits.init(k_init, data.shape[1], hidden)
    optimizer = optax.adam(lr)

    def loss_fn(model, batch):
        return -jnp.mean(model.log_prob(batch))

    def step(carry, k):
        model, opt_state = carry
        batch = data[jax.random.randint(k, (batch_size,), 0, data.shape[0])]
        loss, grads = jax.value_and_grad(loss_fn)(model, batch)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return (optax.apply_updates(model, updates), opt_state), loss

    (model, _), losses = jax.jit(lambda m, s, ks: jax.lax.scan(step, (m, s), ks))(
        model, optimizer.init(model), jax.random.split(k_batch, steps))
    return model, losses
