"""Prompt algebra: parsing, the Composable Diffusion formulas, and one network call per prompt."""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from compdiff import compose
from compdiff.models.diffusion import DiffusionModel
from compdiff.prompts import (
    And,
    Not,
    Or,
    Phrase,
    PromptError,
    compose_prompt,
    parse_prompt,
    phrases,
)
from compdiff.testing import counting_conditional_model

DIM, COND_DIM, B, T = 3, 4, 5, 4
CUBE, BALL, CONE, RING = "a red cube", "a blue sphere", "a green cylinder", "a gold ring"


def _model(parameterization: str) -> DiffusionModel:
    return counting_conditional_model(DIM, COND_DIM, parameterization)


def _embedding(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).normal(size=COND_DIM).astype(np.float32)


@dataclasses.dataclass
class FakeEncoder:
    """Deterministic ``texts -> [n, COND_DIM]`` (a hash-seeded vector per text), counting calls."""

    calls: list = dataclasses.field(default_factory=list)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([_embedding(t) for t in texts])


@pytest.fixture(scope="module")
def energy_model():
    return _model("energy_dae")


@pytest.fixture(scope="module")
def eps_model():
    return _model("eps")


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (B, DIM))


def _by_hand(model: DiffusionModel, x, t=T):
    """``(log p(x), {text: g_text = log p(x|text) - log p(x)})`` from separate leaf calls."""
    log_p0 = model.unconditional().log_prob(x, t)
    offsets = {text: model.condition(_embedding(text)).log_prob(x, t) - log_p0
               for text in (CUBE, BALL, CONE, RING)}
    return log_p0, offsets


def _separately(density: compose.Density) -> compose.Density:
    """The same composition with every leaf evaluated on its own (no shared groups)."""
    if isinstance(density, compose.Node):
        return density.replace(children=tuple(_separately(c) for c in density.children),
                               groups=())
    return density


# --- parsing ----------------------------------------------------------------------------------
def test_precedence_parentheses_and_weights():
    cube, ball, cone = Phrase(CUBE), Phrase(BALL), Phrase(CONE)
    assert parse_prompt(f"{CUBE} AND {BALL} AND NOT {CONE}") == And((cube, ball, Not(cone)))
    # NOT binds tightest, then AND, then OR.
    assert parse_prompt(f"{CUBE} OR {BALL} AND NOT {CONE}") == Or((cube, And((ball, Not(cone)))))
    assert parse_prompt(f"NOT {CUBE} AND {BALL}") == And((Not(cube), ball))
    assert parse_prompt(f"({CUBE} OR {BALL}) AND {CONE}") == And((Or((cube, ball)), cone))
    assert parse_prompt(f"NOT ({CUBE} OR {BALL}) AND {CONE}") == And((Not(Or((cube, ball))),
                                                                      cone))
    # A weight binds to the phrase or group just before it (tighter than NOT).
    assert parse_prompt(f"{CUBE}:1.5") == Phrase(CUBE, 1.5)
    assert parse_prompt(f"{BALL} AND NOT {CUBE}:.5") == And((ball, Not(Phrase(CUBE, 0.5))))
    assert parse_prompt(f"({CUBE} OR {BALL}):2") == Or((cube, ball), weight=2.0)
    assert parse_prompt(f"({CUBE}:3):2e-1") == Phrase(CUBE, 3 * 0.2)
    assert parse_prompt(f"{BALL} AND (NOT {CUBE}):2") == And((ball, Not(cube, weight=2.0)))
    # Chains are n-ary; written parentheses are kept.
    assert parse_prompt("a OR b OR c") == Or((Phrase("a"), Phrase("b"), Phrase("c")))
    assert parse_prompt("(a OR b) OR c") == Or((Or((Phrase("a"), Phrase("b"))), Phrase("c")))


def test_lower_case_connectives_are_words_of_a_phrase():
    assert parse_prompt("a cube and a sphere") == Phrase("a cube and a sphere")
    assert parse_prompt("not a ball or a cube OR a cone") == Or((Phrase("not a ball or a cube"),
                                                                 Phrase("a cone")))
    assert parse_prompt("ANDROID AND NOTE") == And((Phrase("ANDROID"), Phrase("NOTE")))
    assert parse_prompt("  a \t red   cube\n") == Phrase("a red cube")


@pytest.mark.parametrize("prompt", [
    f"{CUBE} AND {BALL} AND NOT {CONE}", f"{CUBE}:1.5 OR {BALL}", f"({CUBE} OR {BALL}):2",
    "a AND b OR c AND NOT d", "(a AND b) AND c", "(a OR b) OR c", "NOT NOT a AND b",
    "c AND NOT (a AND b):0.3", "(NOT a):2 AND b", "(a OR (b AND NOT c):4):1e-05 AND d",
])
def test_str_round_trips(prompt):
    tree = parse_prompt(prompt)
    assert parse_prompt(str(tree)) == tree
    assert str(parse_prompt(str(tree))) == str(tree)


def test_str_is_canonical_and_round_trips_built_trees():
    assert str(parse_prompt("  a   red  cube AND NOT(b) ")) == "a red cube AND NOT b"
    assert str(parse_prompt("(a):2 OR ((b))")) == "a:2 OR b"
    a, b, c = Phrase("a"), Phrase("b", 1 / 3), Phrase("c")
    for tree, text in [(And((Or((a, b)), c)), "(a OR b:0.3333333333333333) AND c"),
                       (Or((And((a, c)), b)), "a AND c OR b:0.3333333333333333"),
                       (And((c, Not(And((a, c))))), "c AND NOT (a AND c)"),
                       (And((a, Not(Or((a, c)), 2.0))), "a AND (NOT (a OR c)):2")]:
        assert str(tree) == text
        assert parse_prompt(text) == tree


@pytest.mark.parametrize("prompt, position, problem", [
    (f"{CUBE} AND", 14, "expected a phrase after AND"),
    ("", 0, "empty prompt"),
    ("   ", 0, "empty prompt"),
    ("(a AND b", 0, "'(' is never closed"),
    ("a AND (b OR (c)", 6, "'(' is never closed"),
    ("a) AND b", 1, "')' without a matching '('"),
    ("()", 1, "empty parentheses"),
    ("a:abc", 2, "bad weight 'abc'"),
    ("a:-", 2, "bad weight '-'"),
    ("a:-1", 2, "bad weight '-1'"),
    ("a:0", 2, "bad weight '0'"),
    ("a:1e400", 2, "bad weight '1e400'"),
    ("a: AND b", 3, "expected a weight after ':', got AND"),
    ("a AND NOT", 9, "expected a phrase after NOT"),
    ("NOT", 3, "expected a phrase after NOT"),
    ("a AND OR b", 6, "expected a phrase after AND, got OR"),
    ("a OR AND b", 5, "expected a phrase after OR, got AND"),
    ("OR a", 0, "expected a phrase at the start, got OR"),
    ("a AND (OR b)", 7, "expected a phrase after '(', got OR"),
    ("a NOT b", 2, "got NOT (write AND NOT)"),
    ("a (b)", 2, "got '('"),
    ("(a) b", 4, "got 'b'"),
    ("a:2:3", 3, "got ':'"),
    ("(a b AND c", 0, "'(' is never closed"),
    ("(a AND b c) d", 12, "expected AND, OR or the end of the prompt, got 'd'"),
    # Nothing positive: the prompt, or an OR branch, is an improper density.
    (f"NOT {CONE}", 0, "nothing positive in the prompt 'NOT a green cylinder'"),
    ("NOT a AND NOT b", 0, "nothing positive in the prompt"),
    ("NOT (a OR b)", 0, "nothing positive in the prompt"),
    ("a OR NOT b", 5, "nothing positive in an OR branch 'NOT b'"),
    ("c AND NOT (a OR NOT b AND NOT d)", 16, "nothing positive in an OR branch"),
])
def test_malformed_prompts_name_the_problem_and_position(prompt, position, problem):
    with pytest.raises(PromptError) as raised:
        parse_prompt(prompt)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"prompt error at position {position}: ")
    assert problem in message, message
    assert message.endswith(f': "{prompt}"'.replace("\n", " "))
    assert raised.value.position == position
    assert isinstance(raised.value, ValueError)


def test_nodes_validate_themselves():
    assert Phrase("  a   cube ").text == "a cube"
    for bad in (lambda: Phrase("a (cube)"), lambda: Phrase("a AND b"), lambda: Phrase(" "),
                lambda: Phrase("a", 0.0), lambda: Phrase("a", -1.0), lambda: Phrase("a", True),
                lambda: And((Phrase("a"),)), lambda: Or((Phrase("a"), "b")),
                lambda: Not("a")):
        with pytest.raises(PromptError):
            bad()
    assert phrases(parse_prompt("a AND b OR a AND NOT (c OR b)")) == ["a", "b", "c"]


# --- composition ------------------------------------------------------------------------------
def test_conjunction_and_negation_are_the_composable_diffusion_formula(energy_model, x):
    log_p0, g = _by_hand(energy_model, x)
    encode = FakeEncoder()
    cases = {
        (f"{CUBE}:1.5 AND {BALL} AND NOT {CONE}:0.5", 2.0):
            log_p0 + 2.0 * (1.5 * g[CUBE] + g[BALL] - 0.5 * g[CONE]),
        (CUBE, 3.0): log_p0 + 3.0 * g[CUBE],
        (CUBE, 1.0): log_p0 + g[CUBE],
        (f"{CUBE} AND {CUBE}:0.5", 1.0): log_p0 + 1.5 * g[CUBE],
        (f"({CUBE} AND NOT {BALL}):2 AND {CONE}", 0.5):
            log_p0 + 0.5 * (2 * g[CUBE] - 2 * g[BALL] + g[CONE]),
        (f"{CUBE} AND NOT NOT {BALL}", 1.0): log_p0 + g[CUBE] + g[BALL],
        (f"{CUBE} AND NOT ({BALL} AND {CONE}:3)", 1.0):
            log_p0 + g[CUBE] - g[BALL] - 3 * g[CONE],
    }
    for (prompt, scale), want in cases.items():
        density = compose_prompt(prompt, energy_model, encode, scale=scale)
        np.testing.assert_allclose(density.log_prob(x, T), want, rtol=1e-4, atol=1e-4,
                                   err_msg=prompt)


def test_or_is_the_logsumexp_mixture_of_the_branches(energy_model, x):
    log_p0, g = _by_hand(energy_model, x)
    s, half, quarter = 1.5, jnp.log(0.5), jnp.log(0.25)
    branch1 = log_p0 + s * (g[CUBE] + g[BALL])
    branch2 = log_p0 + s * (g[CONE] - g[RING])
    mix_ab = logsumexp(jnp.stack([half + log_p0 + s * g[CUBE], half + log_p0 + s * g[BALL]]), 0)
    cases = {
        f"{CUBE} AND {BALL} OR {CONE} AND NOT {RING}":
            logsumexp(jnp.stack([half + branch1, half + branch2]), 0),
        f"({CUBE} OR {BALL}) OR {CONE}": logsumexp(jnp.stack(
            [quarter + log_p0 + s * g[CUBE], quarter + log_p0 + s * g[BALL],
             half + log_p0 + s * g[CONE]]), 0),
        f"({CUBE} OR {BALL}) AND {CONE}": mix_ab + s * g[CONE],
        f"{CONE} AND NOT ({CUBE} OR {BALL})": 2 * log_p0 + s * g[CONE] - mix_ab,
        f"({CUBE} OR {BALL}):2": log_p0 + 2 * (mix_ab - log_p0),
    }
    for prompt, want in cases.items():
        density = compose_prompt(prompt, energy_model, FakeEncoder(), scale=s)
        np.testing.assert_allclose(density.log_prob(x, T), want, rtol=1e-4, atol=1e-4,
                                   err_msg=prompt)


@pytest.mark.parametrize("prompt", [
    f"{CUBE}:1.5 AND {BALL} AND NOT {CONE}:0.5",
    f"{CUBE} AND {BALL} OR {CONE} AND NOT {RING}",
    f"({CUBE} OR {BALL}) AND NOT {CONE}",
])
def test_score_is_the_gradient_of_log_prob(energy_model, x, prompt):
    density = compose_prompt(prompt, energy_model, FakeEncoder(), scale=2.0)
    grad = jax.grad(lambda y: density.log_prob(y, T).sum())(x)
    log_p, score = density.log_prob_and_score(x, T)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(density.score(x, T), grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_p, density.log_prob(x, T), rtol=1e-5, atol=1e-5)


def test_or_over_a_score_only_model_fails_in_one_line_before_any_network_runs(eps_model):
    encode = FakeEncoder()
    eps_model.apply_fn.calls.clear()
    with pytest.raises(ValueError) as raised:
        compose_prompt(f"{CUBE} AND {BALL} OR {CONE}", eps_model, encode)
    message = str(raised.value)
    assert "\n" not in message
    assert "uses OR" in message and "score-only (eps" in message
    assert "train it with an energy parameterization" in message
    assert encode.calls == [] and eps_model.apply_fn.calls == []


def test_score_only_conjunction_is_the_classifier_free_score(eps_model, x):
    density = compose_prompt(f"{CUBE} AND NOT {BALL}:0.5", eps_model, FakeEncoder(), scale=2.0)
    uncond = eps_model.unconditional().score(x, T)
    cube, ball = (eps_model.condition(_embedding(p)).score(x, T) for p in (CUBE, BALL))
    want = uncond + 2.0 * ((cube - uncond) - 0.5 * (ball - uncond))
    eps_model.apply_fn.calls.clear()
    np.testing.assert_allclose(density.score(x, T), want, rtol=1e-4, atol=1e-4)
    # The null condition's weight, 1 - 2 (1 - 0.5), is 0: the term is dropped, two rows of B.
    assert [leaf.describe() for leaf in compose.composition_leaves(density)] == [
        f"model|{CUBE}", f"model|{BALL}"]
    assert eps_model.apply_fn.calls == [2 * B]


def test_distinct_phrases_are_encoded_once_when_the_density_is_built(energy_model, x):
    encode = FakeEncoder()
    density = compose_prompt(f"{CUBE} AND {BALL} OR {CUBE} AND NOT ({CONE} OR {BALL})",
                             energy_model, encode)
    assert encode.calls == [[CUBE, BALL, CONE]]
    for _ in range(3):
        density.score(x, T)
    jax.jit(lambda d, y: d.score(y, T))(density, x)
    assert encode.calls == [[CUBE, BALL, CONE]]
    with pytest.raises(ValueError, match=r"encode returned shape \(3, 2\)"):
        compose_prompt(f"{CUBE} AND {BALL} OR {CONE}", energy_model,
                       lambda texts: np.zeros((len(texts), 2)))


def test_a_built_tree_is_checked_like_a_parsed_prompt(energy_model):
    with pytest.raises(PromptError, match="^prompt error: nothing positive in the prompt"):
        compose_prompt(Not(Phrase(CUBE)), energy_model, FakeEncoder())
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        compose_prompt(CUBE, energy_model, FakeEncoder(), scale=-1.0)
    unconditional = energy_model.replace(cond_dim=0)
    with pytest.raises(ValueError, match="needs a conditional network"):
        compose_prompt(CUBE, unconditional, FakeEncoder())


@pytest.mark.parametrize("what", ["log_prob_and_score", "score", "log_prob"])
def test_a_whole_prompt_is_one_network_call_equal_to_per_branch_evaluation(
        energy_model, x, what):
    calls = energy_model.apply_fn.calls
    density = compose_prompt(f"{CUBE} AND {BALL} OR {CONE} AND NOT {RING}", energy_model,
                             FakeEncoder(), scale=2.0)
    # A mixture of two products, each over [null, cond, cond]: six leaves of one network.
    assert isinstance(density, compose.Mixture)
    assert [type(c) for c in density.children] == [compose.Product, compose.Product]
    assert density.groups == (tuple(range(6)),)
    calls.clear()
    got = getattr(density, what)(x, T)
    assert calls == [6 * B]  # one call on the stacked batch (a vjp reuses its forward pass)

    # Per branch: one call for each product, then the mixture by hand.
    calls.clear()
    branches = [branch.log_prob_and_score(x, T) for branch in density.children]
    assert calls == [3 * B, 3 * B]
    joint = jnp.stack([lp for lp, _ in branches], -1) + density.log_weights
    log_p = logsumexp(joint, -1)
    resp = jax.nn.softmax(joint, -1)
    score = sum(resp[:, i, None] * s for i, (_, s) in enumerate(branches))
    want = {"log_prob_and_score": (log_p, score), "score": score, "log_prob": log_p}[what]
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

    # Under jit the structure is static: one call at trace time.
    calls.clear()
    jitted = jax.jit(lambda d, y: getattr(d, what)(y, T))(density, x)
    assert calls == [6 * B]
    for g, w in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_a_product_over_a_mixture_is_one_call_for_the_strongest_need(energy_model, x):
    """``(a OR b) AND NOT c``: the product's leaves need scores, the mixture's leaves log-densities
    too; the group runs once, for both, and equals every leaf evaluated on its own."""
    calls = energy_model.apply_fn.calls
    density = compose_prompt(f"({CUBE} OR {BALL}) AND NOT {CONE}", energy_model, FakeEncoder(),
                             scale=2.0)
    assert isinstance(density, compose.Product)
    leaves = compose.composition_leaves(density)
    assert density.groups == (tuple(range(len(leaves))),)
    separate = _separately(density)
    for what in ("score", "log_prob_and_score", "log_prob"):
        calls.clear()
        got = getattr(density, what)(x, T)
        assert calls == [len(leaves) * B], what
        calls.clear()
        want = getattr(separate, what)(x, T)
        assert calls == [B] * len(leaves), what
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=what)
