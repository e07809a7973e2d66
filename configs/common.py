"""What every config shares: the variant parser and the sampler rows.

Variants. ``--config=FILE:ARG`` hands ``ARG`` to ``get_config``; :func:`parse_variant`
reads it for every config: bare words chosen from named groups (a size, a dataset) and
``key=value`` options, with defaults and one error style. :func:`variant` is the common
case of one word from a list (the experiments' ``tiny`` / ``quick`` / ``cpu`` / ``paper``).

Sampler rows. A row is ``{"sampler": {"name": kernel, <Sampler fields>}, "label": "",
<the table's own keys>}``: :func:`sampler_row` splits its keyword arguments by the fields
of :class:`compdiff.samplers.Sampler` (whatever they are), checks them by building the
sampler, and stores rules (``step``, ``mass``) as mappings, so a sweep can set
``samplers.hmc.sampler.step.a``. Every table reads rows back with
:func:`compdiff.experiments.common.make_sampler`; labels come from the registry
(``hmc+smc``) unless a row sets its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from compdiff.samplers import Sampler, registry

_FIELDS = {f.name for f in dataclasses.fields(Sampler)} - {"name"}

def variant(arg: str | None, variants: Sequence[str], name: str, default: str) -> str:
    """``arg`` (or ``default``) when it is one of ``variants``; else a ValueError naming them."""
    value = arg or default
    if value not in variants:
        raise ValueError(f"unknown {name} variant {value!r}; known: {list(variants)}")
    return value


def parse_variant(arg: str | None, *, words: Mapping[str, Sequence[str]] | None = None,
                  keys: Mapping[str, Sequence[Any]] | None = None,
                  defaults: Mapping[str, Any] | None = None,
                  required: Sequence[str] = ()) -> dict[str, Any]:
    """``"cpu,param=eps"`` -> ``{"size": "cpu", "param": "eps", ...}`` over ``defaults``.

    ``words``: group -> the bare words that set it (``{"size": ("tiny", "cpu")}``);
    ``keys``: option -> its allowed values (booleans are written ``True`` / ``False``);
    ``required``: groups that must be set (by a word or a default).
    """
    words, keys = dict(words or {}), dict(keys or {})
    out = dict(defaults or {})
    expected = ", ".join([f"one of {list(v)}" for v in words.values()]
                         + [f"{k}=<one of {[str(x) for x in v]}>" for k, v in keys.items()])
    if not words:
        expected = f"key=value pairs with keys {sorted(keys)}"
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        group = next((g for g, choices in words.items() if key in choices), None)
        if not sep and group is not None:
            out[group] = key
        elif sep and key in keys:
            choices = {str(v): v for v in keys[key]}
            if value not in choices:
                raise ValueError(f"unknown {key} {value!r}; known: {list(choices)} (bad config "
                                 f"variant {item!r} in {arg!r})")
            out[key] = choices[value]
        else:
            raise ValueError(f"bad config variant {item!r} in {arg!r}: expected {expected}")
    for group in required:
        if out.get(group) is None:
            raise ValueError(f"config variant {arg!r} names no {group}: one of "
                             f"{list(words.get(group, ()))}")
    return out


def sampler_row(name: str, label: str = "", *, extras: Mapping[str, Any] | None = None,
                **kwargs: Any) -> ml_collections.ConfigDict:
    """A table row: sampler ``name`` with the :class:`Sampler` fields among ``kwargs``
    (checked now), ``label`` (empty: the registry's), and beside them the table's own keys
    (``models``, ``target_accept``): ``extras`` and the other ``kwargs``."""
    fields = {k: v for k, v in kwargs.items() if k in _FIELDS}
    extras = {**(extras or {}), **{k: v for k, v in kwargs.items() if k not in _FIELDS}}
    check = dict(fields, budget=fields.get("budget") or 1) if name == "reverse_equal" else fields
    built = registry.from_fields(name, check)
    stored = {k: (dataclasses.asdict(getattr(built, k))
                  if dataclasses.is_dataclass(getattr(built, k)) else v)
              for k, v in fields.items()}
    return ml_collections.ConfigDict({"sampler": {"name": name, **stored}, "label": label,
                                      **extras})


def image_row(name: str, step: float = 0.0, *, smc: bool = False, steps_per_level: int = 1,
              leapfrog: int = 1, step_power: float = 1.0, mass_power: float = 1.0,
              damping: float = 0.5, label: str = "",
              extras: Mapping[str, Any] | None = None, **fields: Any
              ) -> ml_collections.ConfigDict:
    """A sampler row with RRR's image settings: one reverse step into each level, then
    ``steps_per_level`` kernel steps of size ``step * beta_t ** step_power`` (HMC: mass
    ``beta_t ** mass_power``); ``smc``: SMC resampling at ESS 0.5 instead of the reverse
    step. Other :class:`Sampler` fields pass through (``adapt=0.6``,
    ``matched_reference=True``). ``reverse`` and ``reverse_equal`` take no kernel settings."""
    if name in ("reverse", "reverse_equal"):
        return sampler_row(name, label, extras=extras, **fields)
    return sampler_row(name, label, extras=extras, steps_per_level=steps_per_level,
                       step=(step, step_power), mass=(1.0, mass_power), leapfrog=leapfrog,
                       damping=damping, reverse_first=not smc,
                       resample_ess=0.5 if smc else 0.0, **fields)


# The image tables' sampler rows by label, in table order: RRR's settings (one reverse step
# into each level, then the kernel; or SMC resampling instead of the reverse step), then the
# adapted rows (docs/smc.md): MALA adapted toward acceptance 0.6 after the reverse step at
# the same cost, and adapted MALA SMC from the matched reference.
IMAGE_ROWS = ("reverse", "reverse_equal", "ula", "uhmc", "mala", "hmc", "mala+smc", "hmc+smc",
              "mala+adapt", "mala+adapt+smc")


def image_rows(mala: Mapping[str, Any], hmc: Mapping[str, Any], models: Sequence[str], *,
               labels: Sequence[str] = IMAGE_ROWS,
               models_of: Mapping[str, Sequence[str]] | None = None,
               adapted_moves: int = 3) -> list[ml_collections.ConfigDict]:
    """The rows of :data:`IMAGE_ROWS` named by ``labels`` (in that order), with MALA
    settings ``mala`` and HMC settings ``hmc`` (:func:`image_row`'s keywords), each row
    run on ``models`` (``models_of[label]`` where given: the table's ``models`` key).
    ``adapted_moves``: MALA moves per level of ``mala+adapt+smc``."""
    unknown = [label for label in labels if label not in IMAGE_ROWS]
    if unknown:
        raise ValueError(f"unknown image rows {unknown}; known: {list(IMAGE_ROWS)}")
    adapted = dict(adapt=0.6, matched_reference=True)
    build = {
        "reverse": lambda: image_row("reverse"),
        "reverse_equal": lambda: image_row("reverse_equal"),
        "ula": lambda: image_row("ula", **mala),
        "uhmc": lambda: image_row("uhmc", **hmc),
        "mala": lambda: image_row("mala", **mala),
        "hmc": lambda: image_row("hmc", **hmc),
        "mala+smc": lambda: image_row("mala", smc=True, **mala),
        "hmc+smc": lambda: image_row("hmc", smc=True, **hmc),
        "mala+adapt": lambda: image_row("mala", adapt=0.6, **mala),
        "mala+adapt+smc": lambda: image_row(
            "mala", smc=True, **adapted, **{**mala, "steps_per_level": adapted_moves}),
    }
    rows = []
    for label in labels:
        row = build[label]()
        row.models = list((models_of or {}).get(label, models))
        rows.append(row)
    return rows
