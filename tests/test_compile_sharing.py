"""Compile once per structure: compositions that differ only in condition values share one
compiled annealed sampler (prompts of one shape, position sets of one size, class ids).

Conditions are array leaves and their names only :class:`~compdiff.models.conditioning.Label`
s, so such compositions have equal pytree structures, the jit cache key of the sampler's
``_run``. Compiles are counted from JAX's own compile events (``jax.monitoring``).
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import prompts, samplers
from compdiff.compose import product
from compdiff.experiments import clevr_table, common
from compdiff.models.conditioning import Label
from compdiff.models.diffusion import classifier_free_product
from compdiff.testing import counting_conditional_model

NUM = 4
# A static argument of the sampler no other test passes, so every cache entry here is new.
ESCAPE = 123.25
sampler_compiles = common.compile_seconds  # the annealed sampler's compiles, seconds each


def _sample(target, model_schedule, key: int = 0):
    x, _ = samplers.sample(target, samplers.get("reverse"), model_schedule, jax.random.key(key),
                           NUM, mesh=None, escape=ESCAPE)
    return np.asarray(x)


def _encode(texts: list[str]) -> np.ndarray:
    seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little") for t in texts]
    return np.stack([np.random.default_rng(s).normal(size=4).astype(np.float32) for s in seeds])


def test_labels_are_static_but_all_equal():
    a, b = Label("a red cube"), Label("a blue sphere")
    assert a == b and hash(a) == hash(b) and str(a) == "a red cube" and not Label()
    model = counting_conditional_model(3, 4, "energy_dae")
    red, blue = model.condition(_encode(["x"])[0], "red"), model.condition(_encode(["y"])[0])
    assert jax.tree_util.tree_structure(red) == jax.tree_util.tree_structure(blue)
    # The label travels with the density through tree maps, for describe().
    assert jax.tree_util.tree_map(lambda v: v, red).describe() == "model|red"
    assert blue.describe().startswith("model|") and blue.name == "model"


def test_prompts_of_one_shape_compile_the_sampler_once():
    model = counting_conditional_model(3, 4, "energy_dae")

    def target(prompt: str):
        return prompts.compose_prompt(prompt, model, _encode, scale=3.0)

    same = ["a red cube AND a blue sphere", "a green cylinder AND a gold ring",
            # NOT only flips a weight's sign: the same product of three leaves
            "a red sphere AND NOT a red cylinder"]
    with sampler_compiles() as compiles:
        images = [_sample(target(p), model.schedule) for p in same]
    assert len(compiles) == 1, compiles
    assert not np.allclose(images[0], images[1])  # the conditions are read, not baked in
    assert target(same[0]).describe() != target(same[1]).describe()
    with sampler_compiles() as compiles:
        for p in ("a red cube OR a blue sphere", "a green cylinder OR a gold ring"):
            _sample(target(p), model.schedule)
    assert len(compiles) == 1, compiles  # another shape compiles, once for both prompts


def test_position_sets_of_one_size_compile_the_sampler_once():
    model = counting_conditional_model(3, 2, "eps")
    rng = np.random.default_rng(0)
    # The table's form, one position set per image [num, K, 2] ...
    with sampler_compiles() as compiles:
        for _ in range(2):
            _sample(clevr_table.composition(model, rng.uniform(size=(NUM, 2, 2)), 2.0),
                    model.schedule)
    assert len(compiles) == 1, compiles
    # ... and one set for every image ([K] vectors, which describe() spells out).
    with sampler_compiles() as compiles:
        for _ in range(2):
            values = [jnp.asarray(v, jnp.float32) for v in rng.uniform(size=(3, 2))]
            _sample(classifier_free_product(model, values, 2.0), model.schedule)
    assert len(compiles) == 1, compiles


def test_class_ids_compile_the_sampler_once(skewed_gmm):
    targets = [product([skewed_gmm, skewed_gmm.component_posterior(k)], [1.0, 2.0])
               for k in range(3)]
    assert [t.children[1].describe() for t in targets] == [
        f"skewed.posterior(y={k})" for k in range(3)]
    with sampler_compiles() as compiles:
        means = [_sample(t, skewed_gmm.schedule).mean(0) for t in targets]
    assert len(compiles) == 1, compiles
    assert np.linalg.norm(means[0] - means[1]) > 0.1  # guided towards different modes


@pytest.mark.parametrize("label", ["a red cube", "0.25,0.50", "y=3"])
def test_a_label_is_not_part_of_the_cache_key(label):
    model = counting_conditional_model(3, 4, "energy_dae")
    plain = model.condition(np.zeros(4, np.float32))
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(
        plain.replace(label=Label(label)))
