"""Samples a composition of trained (or oracle) models with a named annealed sampler.

A prompt to a text-conditioned model (``configs/models/text2image.py``), written as a sample grid
``OUT/grid.png`` with ``OUT/samples.npz`` (uint8 NHWC) and ``OUT/samples.json``::

    python scripts/sample.py --model=runs/t2i --prompt="a red cube AND NOT a blue sphere" \
        --sampler=hmc --num=16 --out=out/red_cube [--judge=runs/judge]

(``AND``, ``OR``, ``NOT``, ``phrase:weight``, parentheses: :mod:`compdiff.prompts`;
``--scale`` is the classifier-free weight; samplers use the image settings of
:data:`compdiff.text2image.IMAGE_SAMPLERS`, named by their registry labels (``hmc+smc``);
``--judge`` scores the samples with a concept classifier: ``accuracy`` in the printed
summary.) Compositions of 2D models:

    python scripts/sample.py --model=ring=runs/ring --model=bar=runs/bar \
        --composition="ring*bar" --sampler=mala --steps_per_level=10 --step=0.002 \
        --out=out/ring_bar_mala [--exact]

``--model=NAME=WORKDIR`` loads a training run; ``--model=NAME=oracle:DATASET``
uses a dataset's exact oracle. ``--composition`` is an expression over the
names: ``*`` product, ``+`` mixture, ``/ b^0.5`` negation, ``^w`` weights,
parentheses (see :mod:`compdiff.expr`). In a multi-host run
(:mod:`compdiff.distributed`) the chains are sharded over every process's
devices and process 0 gathers them and writes. Writes ``OUT.npz`` (key ``x``) and
``OUT.png``; ``--exact`` also scores the samples against the same composition
of the leaves' dataset oracles (at the samples' level, grid-normalized) and
plots it. Samples come out at level 0 (``--level=1``: the last annealed level).

Before trusting the samples it prints what it checked: acceptance (mean and
at the lowest-noise levels), chains that diverged, whether the composition
is improper (it then refuses unless ``--allow_improper``) and, for products
and negations with ``mala``/``hmc``, whether it is empty
(:mod:`compdiff.evaluation.diagnostics`). Settings can come from a file with ``--flagfile``.

A sampler of your own: a module that calls :func:`compdiff.samplers.register` at import,
named by ``--register=my_module`` (importable from the working directory or
``PYTHONPATH``), then ``--sampler=<its name>``.
"""

import ast
import importlib
import json
import os

import jax
import numpy as np
from absl import app, flags, logging

from compdiff import cli, exact, expr, plots, samplers, schedules, text2image
from compdiff.data import toy2d
from compdiff.distributed import gather, is_main
from compdiff.evaluation import diagnostics, metrics
from compdiff.models import loading

_MODELS = flags.DEFINE_multi_string("model", None, "NAME=WORKDIR or NAME=oracle:DATASET.")
_COMPOSITION = flags.DEFINE_string("composition", None,
                                   "Expression over model names; default: the only model.")
_PROMPT = flags.DEFINE_string("prompt", None, "A prompt to the one text-conditioned --model "
                              "(then --out is a directory).")
_SCALE = flags.DEFINE_float("scale", 3.0, "With --prompt: the classifier-free weight.")
_JUDGE = flags.DEFINE_string("judge", None, "With --prompt: a concept classifier's work "
                             "directory (configs/models/text2image_classifier.py) that scores the "
                             "samples against the prompt.")
_REGISTER = flags.DEFINE_multi_string("register", [], "Modules to import first: they "
                                      "register samplers (compdiff.samplers.register).")
_SAMPLER = flags.DEFINE_string("sampler", "mala", f"One of {samplers.names()} or a sampler "
                               "registered by a --register module.")
_STEPS = flags.DEFINE_integer("steps_per_level", 10, "Kernel steps per level.")
_LEAPFROG = flags.DEFINE_integer("leapfrog", 3, "Leapfrog steps per HMC step.")
_STEP = flags.DEFINE_float("step", 0.002, "Step size a of eta_t = a * beta_t ** step_b.")
_STEP_B = flags.DEFINE_float("step_b", 0.0, "Exponent b of the step-size rule.")
_MASS = flags.DEFINE_float("mass", 1.0, "HMC mass c of M_t = c * beta_t ** mass_p.")
_MASS_P = flags.DEFINE_float("mass_p", 0.0, "Exponent p of the mass rule.")
_DAMPING = flags.DEFINE_float("damping", None, "HMC momentum damping in [0, 1) "
                               "(default: the sampler's).")
_RESAMPLE = flags.DEFINE_float("resample_ess", 0.0, "SMC: resample when the ESS falls below "
                               "this fraction (mala/hmc only; 0: off).")
_OPTIONS = flags.DEFINE_multi_string(
    "option", [], "Any other Sampler field as NAME=VALUE, e.g. --option=adapt=0.6 "
    "--option=matched_reference=True --option=fkc=True --option=reverse_first=True "
    "(docs/smc.md).")
_LEVEL = flags.DEFINE_enum("level", None, ["0", "1"], "Return samples at level 0 (denoised) or "
                           "1; default 0, or 1 with --exact (level-0 boxes have hard edges).")
_VERDICT = flags.DEFINE_bool("verdict", True, "Estimate whether a product or negation is "
                             "empty (extra annealed runs; needs mala or hmc).")
_ALLOW_IMPROPER = flags.DEFINE_bool("allow_improper", False,
                                    "Sample a composition that has no normalizer anyway.")
_TARGET_ACCEPT = flags.DEFINE_float("target_accept", 0.0,
                                    "Tune the step to this mean acceptance first (0: off).")
_SCHEDULE = flags.DEFINE_string("schedule", "linear", "Schedule when every model is an oracle.")
_LEVELS = flags.DEFINE_integer("levels", 100, "Levels when every model is an oracle.")
_NUM = flags.DEFINE_integer("num", 1000, "Number of samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Output prefix: writes OUT.npz and OUT.png.")
_EXACT = flags.DEFINE_bool("exact", False, "Score and plot against the exact oracle target.")
_EXTENT = flags.DEFINE_float("extent", 1.5, "Half-width of the plotted window.")
flags.mark_flags_as_required(["model", "out"])


def _parse_models() -> dict[str, str]:
    specs = {}
    for item in _MODELS.value or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise app.UsageError(f"--model wants NAME=WORKDIR or NAME=oracle:DATASET, got {item!r}")
        if name in specs:
            raise app.UsageError(f"model name {name!r} given twice")
        specs[name] = source
    return specs


def _dataset(source: str) -> str:
    """The built-in dataset a leaf models: named by ``oracle:`` or read from the run's config.

    A run trained on a points file (``data.path``) has no oracle: ValueError.
    """
    if source.startswith("oracle:"):
        return source.removeprefix("oracle:")
    path = os.path.join(source, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the dataset of {source} from {path}: {e}") from e
    if data.get("path"):
        raise ValueError(f"--exact needs an exact oracle for every model, but {source} was "
                         f"trained on the points in {data['path']}, which have none")
    return data["dataset"]


def _load(specs: dict[str, str]):
    """``(leaves by name, schedule)``; trained leaves must share one schedule.

    Trained leaves need only their work directories (any data, any dimension);
    with ``--exact`` every leaf must also have a built-in oracle, checked before sampling.
    """
    trained = {n: loading.load_model(s) for n, s in specs.items() if not s.startswith("oracle:")}
    if _EXACT.value:
        for source in specs.values():
            _dataset(source)
    levels = {m.schedule.num_levels for m in trained.values()}
    if len(levels) > 1:
        raise ValueError(f"the models were trained with different numbers of levels: {levels}")
    schedule = (next(iter(trained.values())).schedule if trained
                else schedules.get(_SCHEDULE.value, _LEVELS.value))
    oracles = {n: toy2d.get(_dataset(s), schedule) for n, s in specs.items() if n not in trained}
    return {**trained, **oracles}, schedule


def _sample_prompt() -> None:
    if len(_MODELS.value) != 1:
        raise app.UsageError("--prompt samples one text-conditioned model: give one --model=DIR")
    workdir = _MODELS.value[0].rpartition("=")[2]  # DIR or NAME=DIR
    summary = text2image.sample_prompt(workdir, _PROMPT.value, _SAMPLER.value, _NUM.value,
                                       _SCALE.value, _SEED.value, _OUT.value, _JUDGE.value)
    if is_main():
        print(json.dumps(summary))
        print(f"wrote {_OUT.value}/grid.png and {_OUT.value}/samples.npz")


def _parse_options(items: list[str]) -> dict:
    """``["adapt=0.6", "fkc=True"]`` -> ``{"adapt": 0.6, "fkc": True}`` (Python literals)."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option={item!r}: expected NAME=VALUE")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"--option={item!r}: {value!r} is not a number, True/False "
                             "or a quoted string") from None
    return options


def main(argv: list[str]) -> None:
    cli.start(argv)
    for module in _REGISTER.value:
        importlib.import_module(module)
    if _PROMPT.value is not None:
        _sample_prompt()
        return
    specs = _parse_models()
    text = _COMPOSITION.value or (next(iter(specs)) if len(specs) == 1 else None)
    if text is None:
        raise app.UsageError("with several models, --composition must say how to combine them")
    level = int(_LEVEL.value or (1 if _EXACT.value else 0))
    options = {} if _DAMPING.value is None else {"damping": _DAMPING.value}
    options.update(_parse_options(_OPTIONS.value))
    sampler = samplers.registry.from_fields(
        _SAMPLER.value, steps_per_level=_STEPS.value, leapfrog=_LEAPFROG.value,
        step=(_STEP.value, _STEP_B.value), mass=(_MASS.value, _MASS_P.value),
        resample_ess=_RESAMPLE.value, **options)
    leaves, schedule = _load(specs)
    target = expr.parse(text, leaves)
    improper = target.has_log_prob and diagnostics.improper_reason(target, 1)
    if improper and not _ALLOW_IMPROPER.value:
        raise ValueError(f"{improper}. There is no distribution to sample; "
                         "--allow_improper samples it anyway")
    key = jax.random.PRNGKey(_SEED.value)
    if _TARGET_ACCEPT.value > 0:
        sampler = samplers.tune_step(target, sampler, schedule, jax.random.fold_in(key, 1),
                                     _TARGET_ACCEPT.value)
        logging.info("tuned step size: %g", sampler.step.a)
    x, stats = samplers.sample(target, sampler, schedule, key, _NUM.value,
                               denoise=level == 0)
    x = gather(x)  # chains are sharded over every process's devices
    verdict = None
    if _VERDICT.value and sampler.spec.needs_log_prob:
        verdict = diagnostics.mass_verdict(target, sampler, schedule,
                                           jax.random.fold_in(key, 3), min(_NUM.value, 1000))
    reference = None
    if _EXACT.value:
        oracles = {n: toy2d.get(_dataset(s), schedule) for n, s in specs.items()}
        reference = exact.on_grid(expr.parse(text, oracles), level, extent=2.0)

    if not is_main():  # every process sampled its chains; process 0 reports and writes
        return
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    np.savez(_OUT.value + ".npz", x=x)
    health = stats.summary()
    lines = [f"{_SAMPLER.value} on {target.describe()}: {len(x)} samples at level {level}, "
             f"NFE {stats.nfe}"]
    if health["accept_mean"] is not None:
        lines.append(f"acceptance: mean {health['accept_mean']:.2f}, level 1 "
                     f"{health['accept_level1']:.2f}, lowest-noise 10% of levels "
                     f"{health['accept_low_noise']:.2f}")
    lines.append(f"divergence: {stats.diverged} of {len(x)} chains at level 1 "
                 f"({health['nonfinite']} not finite, {health['escaped']} escaped); "
                 f"worst level {health['max_diverged']}"
                 + (" (none)" if health["max_diverged"] == 0 else " -- lower the step size"))
    if improper:
        lines.append(f"WARNING {improper}")
    if verdict is not None:
        lines.append(f"emptiness: {verdict.line()}")
    elif _VERDICT.value:
        lines.append(f"emptiness: not checked ({_SAMPLER.value} has no importance weights; "
                     "use mala or hmc)")
    if reference is not None:
        y = np.asarray(reference.sample(jax.random.fold_in(key, 2), len(x)))
        scores = metrics.evaluate(x, reference, y, components=8)
        mode_tv = "-" if scores["mode_tv"] is None else f"{scores['mode_tv']:.3f}"
        lines.append(f"exact level-{level} target: ll {scores['ll']:.3f} (exact "
                     f"{metrics.ll(y, reference):.3f}), mode TV {mode_tv}, mmd "
                     f"{scores['mmd']:.2e}, var {scores['var']:.2e}")
    plots.scatter(_OUT.value + ".png", x, f"{_SAMPLER.value}: {text}", extent=_EXTENT.value,
                  target=reference)
    print("\n".join(lines))
    print(f"wrote {_OUT.value}.npz and {_OUT.value}.png")


if __name__ == "__main__":
    cli.run(main)
