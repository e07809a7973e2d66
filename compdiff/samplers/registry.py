"""Samplers chosen by name (score_sde style) and their per-level schedules.

A :class:`Sampler` is a frozen, hashable description: which kernel, how many
kernel steps per level, and the rules that give each level its step size and
mass. ``get("hmc", steps_per_level=3, leapfrog=3, step=StepRule(0.1, 1.0))``
builds one; :func:`register` adds a kernel under a new name.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from compdiff.samplers import kernels


@dataclasses.dataclass(frozen=True)
class StepRule:
    """Per-level step size ``eta_t = a * beta_t ** b`` (``b = 0``: constant ``a``)."""

    a: float
    b: float = 0.0

    def table(self, beta: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(beta, np.float64) ** self.b


@dataclasses.dataclass(frozen=True)
class MassRule:
    """Per-level scalar HMC mass ``M_t = c * beta_t ** p`` (RRR images: ``M = beta_t``)."""

    c: float = 1.0
    p: float = 0.0

    def table(self, beta: np.ndarray) -> np.ndarray:
        return self.c * np.asarray(beta, np.float64) ** self.p


ADAPT_RATE = 1.0  # log-step change per unit of acceptance error, per kernel step


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    kernel: kernels.Kernel | None  # None: the reverse-diffusion baseline, no kernel steps
    needs_log_prob: bool
    grads_per_step: str  # "one" or "leapfrog"


_REGISTRY: dict[str, KernelSpec] = {
    "reverse": KernelSpec(None, False, "one"),
    # Reverse diffusion over the last `budget` levels of a longer schedule (equal_cost.py).
    "reverse_equal": KernelSpec(None, False, "one"),
    "ula": KernelSpec(kernels.ula, False, "one"),
    "mala": KernelSpec(kernels.mala, True, "one"),
    "uhmc": KernelSpec(kernels.uhmc, False, "leapfrog"),
    "hmc": KernelSpec(kernels.hmc, True, "leapfrog"),
}


def register(name: str, kernel: kernels.Kernel, needs_log_prob: bool,
             grads_per_step: str = "one") -> None:
    """Adds a kernel ``(target, ChainState, key, LevelParams) -> (ChainState, accept_prob)``."""
    if grads_per_step not in ("one", "leapfrog"):
        raise ValueError(f"grads_per_step must be 'one' or 'leapfrog', got {grads_per_step!r}")
    _REGISTRY[name] = KernelSpec(kernel, needs_log_prob, grads_per_step)


def names() -> list[str]:
    return sorted(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """An annealed sampler: ``steps_per_level`` kernel steps at each level ``t = T..1``.

    ``reverse_first`` runs one reverse-diffusion step into each level before
    its kernel steps (RRR does this on images). The ``reverse`` sampler is
    reverse diffusion alone. ``resample_ess > 0`` turns annealed MCMC into
    sequential Monte Carlo: on entering a level, if the effective sample size
    of the annealed importance weights falls below ``resample_ess * num``, the
    chains are resampled in proportion to their weights (systematic
    resampling). Without it, chains that cannot cross between separated modes
    at low noise freeze the mode weights of an intermediate level; the weights
    correct exactly that (see ``tests/test_annealed.py``).

    ``reverse_equal`` is reverse diffusion spending ``budget`` score
    evaluations per chain: give it a target and schedule of at least
    ``budget`` levels (:func:`~compdiff.samplers.equal_cost_levels` picks the
    schedule whose last ``budget`` levels end at a given noise level).

    Weights exist when every move is accounted for: the kernel leaves each
    level's target invariant (MALA, HMC) or there is none, and the target has
    a log-density; a reverse step into a level is then an SMC proposal with
    its exact correction (``samplers/weights.py``). ``fkc=True`` gives the
    ``reverse`` sampler Feynman-Kac corrector weights instead, for score-only
    weighted products (an approximation; docs/smc.md).

    ``adapt`` in (0, 1) sets the Metropolis kernels' steps inside the run: the
    step is ``StepRule(beta_t) * exp(s)``, and after every kernel step ``s``
    moves by ``ADAPT_RATE * (mean acceptance - adapt)``, from the population's
    acceptance, carried from level to level (``stats.step`` records it).
    ``adapt = 0`` keeps the fixed rule ``a * beta_t ** b`` (RRR). Targets: about
    0.6 for MALA, 0.65-0.8 for HMC.

    ``matched_reference`` starts the chains from ``N(0, c I)`` instead of
    ``N(0, I)``, with ``c`` matched to the level-``T`` target by one score
    evaluation (``c = sum |z|^2 / sum -<z, s_T(z)>``): a product of ``n``
    models is ``N(0, I / n)`` at level ``T``, and starting it from ``N(0, I)``
    puts an importance weight of variance ``~ d (n - 1)^2 / 2`` on every chain.

    ``damping`` defaults to 0.5, chosen by ``scripts/damping.py``: annealed
    HMC on an exact Gaussian and on the exact ring x bar product, 3 and 10
    kernel steps per level. RRR's image value 0.9 under-dissipates with few
    steps per level (level-1 variance 9.9 standard errors too high with 3
    steps) and mixes worst with 10; 0.5 is within noise at both
    (``docs/design_notes.md``).
    """

    name: str
    steps_per_level: int = 10
    step: StepRule = StepRule(1e-3)
    mass: MassRule = MassRule()
    leapfrog: int = 3
    damping: float = 0.5
    reverse_first: bool = False
    resample_ess: float = 0.0
    budget: int = 0
    adapt: float = 0.0
    fkc: bool = False
    matched_reference: bool = False

    def __post_init__(self):
        if self.name not in _REGISTRY:
            raise ValueError(f"unknown sampler {self.name!r}; known: {names()}")
        if self.spec.kernel is not None and self.steps_per_level < 1:
            raise ValueError(f"steps_per_level must be >= 1, got {self.steps_per_level}")
        if (isinstance(self.resample_ess, bool) or not isinstance(self.resample_ess, (int, float))
                or not 0.0 <= self.resample_ess <= 1.0):
            raise ValueError(f"resample_ess must be a number in [0, 1] (0: no resampling), "
                             f"got {self.resample_ess!r}")
        if self.resample_ess > 0 and not (self.invariant or self.fkc):
            raise ValueError(
                f"sampler {self.name!r} cannot resample (resample_ess={self.resample_ess}): "
                "resampling weighs chains by importance weights, which are valid only for "
                "kernels that leave each level's target invariant (mala, hmc) or none "
                f"(reverse); {self.name!r} is unadjusted, so its weights are undefined")
        if isinstance(self.adapt, bool) or not 0.0 <= self.adapt < 1.0:
            raise ValueError(f"adapt is a target acceptance in (0, 1) (0: fixed steps), "
                             f"got {self.adapt!r}")
        if self.adapt > 0 and not self.spec.needs_log_prob:
            raise ValueError(f"sampler {self.name!r} has no acceptance rate to adapt its step "
                             "to; adapt needs a Metropolis-adjusted kernel (mala, hmc)")
        if self.fkc and self.spec.kernel is not None:
            raise ValueError("fkc (Feynman-Kac corrector weights) is for the reverse sampler: "
                             f"{self.name!r}'s kernel moves would need weights of their own")
        if (self.name == "reverse_equal") != (self.budget > 0):
            raise ValueError("budget (score evaluations per chain) is for the reverse_equal "
                             f"sampler alone and it needs one >= 1; got {self.name!r} with "
                             f"budget={self.budget}")
        if self.leapfrog < 1:
            raise ValueError(f"leapfrog must be >= 1, got {self.leapfrog}")
        if not 0.0 <= self.damping < 1.0:
            raise ValueError(f"damping must lie in [0, 1), got {self.damping}")
        for label, value in (("step.a", self.step.a), ("step.b", self.step.b),
                             ("mass.c", self.mass.c), ("mass.p", self.mass.p)):
            if not math.isfinite(value):
                raise ValueError(f"sampler {self.name!r}: {label} must be finite, got {value}")
        if self.step.a <= 0 or self.mass.c <= 0:
            raise ValueError(f"sampler {self.name!r}: step size and mass must be positive, "
                             f"got step.a={self.step.a}, mass.c={self.mass.c}")

    @property
    def spec(self) -> KernelSpec:
        return _REGISTRY[self.name]

    @property
    def invariant(self) -> bool:
        """Whether every kernel move leaves its level's target invariant (or there is none)."""
        return self.spec.kernel is None or self.spec.needs_log_prob

    @property
    def num_kernel_steps(self) -> int:
        return 0 if self.spec.kernel is None else self.steps_per_level

    @property
    def grads_per_step(self) -> int:
        return self.leapfrog if self.spec.grads_per_step == "leapfrog" else 1

    def nfe(self, num_levels: int) -> int:
        """Gradient (score) evaluations per chain over a whole run of ``num_levels`` levels.

        One evaluation refreshes the cache on entering each level (it also
        gives the score the next reverse step uses), then each kernel step
        costs ``grads_per_step``.
        """
        if self.name == "reverse_equal":
            return self.budget
        return (num_levels * (1 + self.num_kernel_steps * self.grads_per_step)
                + int(self.matched_reference))


def get(name: str, **kwargs) -> Sampler:
    """``get("mala", steps_per_level=10, step=StepRule(0.002))``; errors name the bad field."""
    fields = {f.name for f in dataclasses.fields(Sampler)} - {"name"}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {sorted(fields)}")
    for rule, cls in (("step", StepRule), ("mass", MassRule)):
        if isinstance(kwargs.get(rule), (int, float)):
            kwargs[rule] = cls(float(kwargs[rule]))
    return Sampler(name=name, **kwargs)


# --- one sampler schema: config rows, labels -------------------------------------------------
def _field_value(default: object, value: object) -> object:
    """A row's value for a field whose default is ``default``: a rule dataclass (``StepRule``,
    ``MassRule``, ...) is given as a number (its first field), a sequence (positional) or a
    mapping (by name); anything else is taken as is."""
    if not dataclasses.is_dataclass(default) or dataclasses.is_dataclass(value):
        return value
    cls = type(default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return cls(float(value))
    if isinstance(value, (list, tuple)):
        return cls(*value)
    if hasattr(value, "items"):
        return cls(**dict(value.items()))
    raise ValueError(f"cannot read {value!r} as a {cls.__name__}")


def from_fields(name: str, fields: dict | None = None, **overrides: object) -> Sampler:
    """``Sampler(name, **fields)`` from a config row's plain values, for every field of
    :class:`Sampler` alike (rules as numbers, sequences or mappings): the one reader of
    sampler rows, so a field added to :class:`Sampler` is readable from configs at once."""
    values = {**dict((fields or {}).items()), **overrides}
    defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING
                         and f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(Sampler) if f.name != "name"}
    unknown = set(values) - set(defaults)
    if unknown:
        raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return Sampler(name=name, **{k: _field_value(defaults[k], v) for k, v in values.items()})


def label(sampler: Sampler) -> str:
    """The sampler's name in tables and file names: ``hmc``, ``hmc+smc`` (resampling on),
    ``mala+adapt+smc`` (steps adapted to a target acceptance), ``reverse+fkc+smc``
    (Feynman-Kac corrector weights)."""
    return (sampler.name + ("+adapt" if sampler.adapt > 0 else "")
            + ("+fkc" if sampler.fkc else "") + ("+smc" if sampler.resample_ess > 0 else ""))


def needs_log_prob(name: str) -> bool:
    """Whether kernel ``name`` needs its target's log-density (a Metropolis test, weights)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; known: {names()}")
    return _REGISTRY[name].needs_log_prob
