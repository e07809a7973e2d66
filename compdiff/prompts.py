"""Prompt algebra: ``"a red cube AND a blue sphere AND NOT a green cylinder"`` as a density.

A prompt is parsed into a small immutable tree (:class:`Phrase`, :class:`And`,
:class:`Or`, :class:`Not`) and composed over the conditions of ONE
text-conditioned network (:func:`compose_prompt`), the way Composable
Diffusion and RRR compose conditions with classifier-free weights.

Grammar (keywords are the upper-case words ``AND``, ``OR``, ``NOT``; the
lower-case ``and``, ``or``, ``not`` are words of a phrase, so ``"a cube and a
sphere"`` is one phrase)::

    prompt := or END
    or     := and ("OR" and)*
    and    := unary ("AND" unary)*
    unary  := "NOT" unary | atom
    atom   := (PHRASE | "(" or ")") [":" WEIGHT]

so NOT binds tightest, then AND, then OR, and a weight binds to the phrase or
parenthesized group just before it (``NOT a cube:2`` is ``NOT (a cube:2)``).
A phrase is a run of words; it is stripped and its inner whitespace
collapsed. ``(``, ``)`` and ``:`` are reserved. A weight is a positive
decimal number (``1.5``, ``.5``, ``2e-1``). A chain of one operator is one
n-ary node (``a AND b AND c`` is ``And(a, b, c)``); parentheses the user
writes are kept (``(a AND b) AND c`` is ``And(And(a, b), c)``), and ``str``
writes a tree back in this syntax (``parse_prompt(str(tree)) == tree``).
Malformed prompts raise :class:`PromptError` (a ``ValueError``) with one line
naming the problem and its 0-based character position.

Semantics. Write ``g_c(x) = log p(x | c) - log p(x)`` for a phrase's
classifier-free guidance term, ``s`` for ``scale`` and ``w`` for a node's
weight. Every node ``N`` has an offset ``G_N`` from the unconditional model,
and the density it stands for is ``log p_N(x) = log p(x) + G_N(x)``::

    G[c : w]               = s w g_c
    G[(N_1 AND .. N_k) : w] = w sum_i G[N_i]
    G[(NOT N) : w]          = -w G[N]
    G[(B_1 OR .. B_k) : w]  = w logsumexp_b(log(1/k) + G[B_b])

For an AND of phrases ``c_i`` (weights ``w_i``) and negated phrases ``n_j``
(weights ``v_j``) this is Composable Diffusion's conjunction and negation,

    log p(x) + s [sum_i w_i (log p(x|c_i) - log p(x)) - sum_j v_j (log p(x|n_j) - log p(x))],

a weighted product over the conditions and the null condition of the one
network. OR is the equal-weight mixture of its branches' composed densities
``p(x) exp(G[B_b])`` (RRR's disjunction; normalizers taken equal, as in
:mod:`compdiff.compose`), so it needs log-densities: an energy-parameterized
network. Grouping is kept: ``a OR b OR c`` weighs each 1/3, ``(a OR b) OR c``
weighs ``a`` and ``b`` 1/4 each. A weight always scales guidance, never a
mixture proportion (``a:2 OR b`` is the even mixture of ``p(x|a)^2 / p(x)``
and ``p(x|b)`` at ``s = 1``); on an OR group it tempers the mixture relative
to ``p(x)``: ``log p(x) + w (log mix - log p(x))``.

Corner cases of NOT and OR follow from the recursion rather than being
special-cased: NOT of a group negates its whole offset (``c AND NOT (a AND
b)`` subtracts both), NOT of an OR subtracts the log-mixture offset, NOT NOT
cancels, an OR may sit inside an AND (``(a OR b) AND c``: the mixture's offset
plus ``s g_c``). One rule keeps every density proper: the prompt itself and
each OR branch (each is a density on its own) must have a positive part, a
phrase or OR under an even number of NOTs. ``NOT c`` alone,
``p(x)^(1+s) / p(x|c)^s``, is not a normalizable density, so ``"NOT a cube"``
and ``"a cube OR NOT a ball"`` are errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Hashable, Sequence

import jax.numpy as jnp
import numpy as np

from compdiff import compose
from compdiff.compose import Density
from compdiff.models.diffusion import DiffusionModel

Array = jnp.ndarray
# The text encoder: phrases -> pooled embeddings [n, d].
Encoder = Callable[[list[str]], Array]

KEYWORDS = ("AND", "OR", "NOT")
_RESERVED = "():"
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class PromptError(ValueError):
    """A malformed or improper prompt: ``position`` (0-based, ``None`` for a built tree)."""

    def __init__(self, problem: str, prompt: str | None = None, position: int | None = None):
        self.problem, self.prompt, self.position = problem, prompt, position
        where = "" if position is None else f" at position {position}"
        # Any whitespace shown as a space, so the message stays one line and positions hold.
        shown = "" if prompt is None else ': "' + re.sub(r"\s", " ", prompt) + '"'
        super().__init__(f"prompt error{where}: {problem}{shown}")


def _format_weight(weight: float) -> str:
    short = f"{weight:g}"
    return short if float(short) == weight else repr(weight)


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
            math.isfinite(weight) and weight > 0):
        raise PromptError(f"a weight must be a positive finite number, got {weight!r}")
    return float(weight)


def _check_children(node: And | Or, children: Sequence[PromptNode]) -> None:
    children = tuple(children)
    if len(children) < 2 or not all(isinstance(c, _NODE_TYPES) for c in children):
        raise PromptError(f"{type(node).__name__} needs two or more prompt nodes, got "
                          f"{children!r}")
    object.__setattr__(node, "children", children)


@dataclasses.dataclass(frozen=True)
class Phrase:
    """One condition, ``text`` (whitespace-normalized), with guidance weight ``weight``."""

    text: str
    weight: float = 1.0

    def __post_init__(self):
        text = " ".join(str(self.text).split())
        bad = [w for w in text.split() if w in KEYWORDS] + [c for c in _RESERVED if c in text]
        if not text or bad:
            raise PromptError(f"a phrase must be non-empty text without {', '.join(KEYWORDS)} "
                              f"or any of '{_RESERVED}', got {self.text!r}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def __str__(self) -> str:
        return self.text if self.weight == 1.0 else f"{self.text}:{_format_weight(self.weight)}"


@dataclasses.dataclass(frozen=True)
class And:
    """Conjunction: the offsets of ``children`` add (times ``weight``)."""

    children: tuple[PromptNode, ...]
    weight: float = 1.0

    def __post_init__(self):
        _check_children(self, self.children)
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def __str__(self) -> str:
        return _weighted_str(" AND ".join(_operand(c, self) for c in self.children), self.weight)


@dataclasses.dataclass(frozen=True)
class Or:
    """Disjunction: the equal-weight mixture of the ``children``'s densities."""

    children: tuple[PromptNode, ...]
    weight: float = 1.0

    def __post_init__(self):
        _check_children(self, self.children)
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def __str__(self) -> str:
        return _weighted_str(" OR ".join(_operand(c, self) for c in self.children), self.weight)


@dataclasses.dataclass(frozen=True)
class Not:
    """Negation: ``-weight`` times the offset of ``child``."""

    child: PromptNode
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.child, _NODE_TYPES):
            raise PromptError(f"Not needs a prompt node, got {self.child!r}")
        object.__setattr__(self, "weight", _check_weight(self.weight))

    def __str__(self) -> str:
        return _weighted_str("NOT " + _operand(self.child, self), self.weight)


PromptNode = Phrase | And | Or | Not
_NODE_TYPES = (Phrase, And, Or, Not)


def _weighted_str(body: str, weight: float) -> str:
    return body if weight == 1.0 else f"({body}):{_format_weight(weight)}"


def _operand(child: PromptNode, parent: PromptNode) -> str:
    """``child`` written inside ``parent``, parenthesized where precedence or grouping needs it."""
    text = str(child)
    if child.weight != 1.0 or isinstance(child, Phrase | Not):
        return text  # a weighted group already carries its parentheses
    needs = {And: (And, Or), Or: (Or,), Not: (And, Or)}[type(parent)]
    return f"({text})" if isinstance(child, needs) else text


# --- parsing -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "WORD", "AND", "OR", "NOT", "(", ")", ":", "END"
    text: str
    position: int

    def shown(self) -> str:
        if self.kind == "END":
            return "the end of the prompt"
        return self.text if self.kind in KEYWORDS else f"'{self.text}'"


def _tokens(prompt: str) -> list[_Token]:
    out, i = [], 0
    while i < len(prompt):
        char = prompt[i]
        if char.isspace():
            i += 1
        elif char in _RESERVED:
            out.append(_Token(char, char, i))
            i += 1
        else:
            word = re.match(r"[^\s():]+", prompt[i:]).group()
            out.append(_Token(word if word in KEYWORDS else "WORD", word, i))
            i += len(word)
    out.append(_Token("END", "", len(prompt)))
    return out


class _Parser:
    """Recursive descent over :func:`_tokens`; ``starts`` maps each node to its position."""

    def __init__(self, prompt: str):
        self.prompt, self.tokens, self.i = prompt, _tokens(prompt), 0
        self.starts: dict[int, int] = {}

    def error(self, position: int, problem: str) -> PromptError:
        return PromptError(problem, self.prompt, position)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def node(self, node: PromptNode, position: int) -> PromptNode:
        self.starts[id(node)] = position
        return node

    def parse(self) -> PromptNode:
        if self.peek().kind == "END":
            raise self.error(0, "empty prompt")
        tree = self.or_(after="at the start")
        token = self.peek()
        if token.kind == ")":
            raise self.error(token.position,
                             "unbalanced parentheses: ')' without a matching '('")
        if token.kind != "END":
            raise self.error(token.position, self.unexpected(token, "the end of the prompt"))
        return tree

    def unexpected(self, token: _Token, closing: str) -> str:
        hint = " (write AND NOT)" if token.kind == "NOT" else ""
        return f"expected AND, OR or {closing}, got {token.shown()}{hint}"

    def or_(self, after: str) -> PromptNode:
        start = self.peek().position
        branches = [self.and_(after)]
        while self.peek().kind == "OR":
            self.take()
            branches.append(self.and_(after="after OR"))
        return branches[0] if len(branches) == 1 else self.node(Or(tuple(branches)), start)

    def and_(self, after: str) -> PromptNode:
        start = self.peek().position
        terms = [self.unary(after)]
        while self.peek().kind == "AND":
            self.take()
            terms.append(self.unary(after="after AND"))
        return terms[0] if len(terms) == 1 else self.node(And(tuple(terms)), start)

    def unary(self, after: str) -> PromptNode:
        if self.peek().kind == "NOT":
            start = self.take().position
            return self.node(Not(self.unary(after="after NOT")), start)
        return self.atom(after)

    def atom(self, after: str) -> PromptNode:
        token = self.peek()
        if token.kind == "WORD":
            words = []
            while self.peek().kind == "WORD":
                words.append(self.take().text)
            node = self.node(Phrase(" ".join(words)), token.position)
        elif token.kind == "(":
            self.take()
            if self.peek().kind == ")":
                raise self.error(self.peek().position, "empty parentheses")
            node = self.or_(after="after '('")
            closing = self.peek()
            if closing.kind == "END":
                raise self.error(token.position,
                                 "unbalanced parentheses: '(' is never closed")
            if closing.kind != ")":
                raise self.error(closing.position, self.unexpected(closing, "')'"))
            self.take()
            self.starts[id(node)] = token.position
        else:
            got = "" if token.kind == "END" else f", got {token.shown()}"
            raise self.error(token.position, f"expected a phrase {after}{got}")
        if self.peek().kind == ":":
            colon = self.take()
            number = self.peek()
            if number.kind != "WORD":
                raise self.error(number.position,
                                 f"expected a weight after ':', got {number.shown()}")
            self.take()
            weight = float(number.text) if _NUMBER.fullmatch(number.text) else math.nan
            if not (weight > 0 and math.isfinite(weight * node.weight)):
                raise self.error(number.position, f"bad weight '{number.text}': a weight is a "
                                 "positive finite number such as 1.5")
            weighted = dataclasses.replace(node, weight=node.weight * weight)
            node = self.node(weighted, self.starts.get(id(node), colon.position))
        return node


def _has_positive_part(node: PromptNode, sign: int = 1) -> bool:
    """Whether ``node`` (under ``sign``) contributes a phrase or OR with a positive coefficient."""
    if isinstance(node, Phrase | Or):
        return sign > 0
    if isinstance(node, Not):
        return _has_positive_part(node.child, -sign)
    return any(_has_positive_part(c, sign) for c in node.children)


def _improper_part(node: PromptNode, is_density: bool = True) -> PromptNode | None:
    """The first part that must be a density (the prompt, an OR branch) but has nothing positive."""
    if is_density and not _has_positive_part(node):
        return node
    children = (node.child,) if isinstance(node, Not) else getattr(node, "children", ())
    for child in children:
        found = _improper_part(child, is_density=isinstance(node, Or))
        if found is not None:
            return found
    return None


def check_proper(tree: PromptNode, prompt: str | None = None,
                 starts: dict[int, int] | None = None) -> None:
    """Raise :class:`PromptError` unless the prompt and every OR branch has a positive part.

    ``NOT c`` alone is ``p(x) (p(x) / p(x|c))^s``, which need not normalize:
    negation only carves mass out of a positive prompt.
    """
    part = _improper_part(tree)
    if part is not None:
        what = "the prompt" if part is tree else "an OR branch"
        raise PromptError(
            f"nothing positive in {what} '{part}': NOT only removes mass from a positive prompt "
            "(p(x) / p(x|c)^w alone is an improper density); add a phrase, e.g. "
            "'a cube AND NOT a ball'", prompt,
            None if starts is None else starts.get(id(part)))


def parse_prompt(prompt: str) -> PromptNode:
    """The tree of ``prompt`` (see the module docstring); :class:`PromptError` if malformed."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt is a str, got {type(prompt).__name__}")
    parser = _Parser(prompt)
    tree = parser.parse()
    check_proper(tree, prompt, parser.starts)
    return tree


def phrases(tree: PromptNode) -> list[str]:
    """The distinct phrase texts of ``tree``, in order of first appearance."""
    if isinstance(tree, Phrase):
        return [tree.text]
    children = (tree.child,) if isinstance(tree, Not) else tree.children
    return list(dict.fromkeys(text for c in children for text in phrases(c)))


def _contains_or(tree: PromptNode) -> bool:
    if isinstance(tree, Or):
        return True
    children = (tree.child,) if isinstance(tree, Not) else getattr(tree, "children", ())
    return any(_contains_or(c) for c in children)


# --- composition ----------------------------------------------------------------------------
# (merge key: a phrase's text or an OR node's id, density q, coefficient a) of a (log q - log p(x))
_Term = tuple[Hashable, Density, float]


class _Composer:
    """Builds ``log p(x) + G_N`` for prompt nodes over bound conditions of one network."""

    def __init__(self, unconditional: Density, conditioned: dict[str, Density], scale: float):
        self.unconditional, self.conditioned, self.scale = unconditional, conditioned, scale

    def offset_terms(self, node: PromptNode, coefficient: float) -> list[_Term]:
        """``G_node * coefficient`` as ``(key, q, a)`` terms, each ``a (log q - log p(x))``."""
        coefficient *= node.weight
        if isinstance(node, Phrase):
            return [(node.text, self.conditioned[node.text], self.scale * coefficient)]
        if isinstance(node, Not):
            return self.offset_terms(node.child, -coefficient)
        if isinstance(node, And):
            return [term for c in node.children for term in self.offset_terms(c, coefficient)]
        branches = compose.mixture([self.density(b) for b in node.children])
        return [(id(node), branches, coefficient)]

    def density(self, node: PromptNode) -> Density:
        """``log p(x) + G_node``: one weighted product over the null and bound conditions."""
        merged: dict[Hashable, tuple[Density, float]] = {}
        for key, q, a in self.offset_terms(node, 1.0):
            # A phrase said twice in one conjunction is one leaf with the summed weight.
            merged[key] = (q, merged[key][1] + a) if key in merged else (q, a)
        unconditional_weight = 1.0 - sum(a for _, a in merged.values())
        terms = [(self.unconditional, unconditional_weight), *merged.values()]
        # Zero-weight terms (scale 1 on one phrase, "a AND NOT a") would only cost network rows.
        terms = [(q, a) for q, a in terms if not math.isclose(a, 0.0, abs_tol=1e-12)]
        if len(terms) == 1 and terms[0][1] == 1.0:
            return terms[0][0]
        return compose.product([q for q, _ in terms], [a for _, a in terms])


def compose_prompt(prompt: str | PromptNode, model: DiffusionModel, encode: Encoder,
                   scale: float = 1.0) -> Density:
    """The density of ``prompt`` over the conditions of ``model`` (one conditional network).

    An AND (or a single phrase) of phrases ``c_i`` (weights ``w_i``) and
    negated phrases ``n_j`` (weights ``v_j``) is

        log p(x) + scale * [sum_i w_i (log p(x|c_i) - log p(x))
                            - sum_j v_j (log p(x|n_j) - log p(x))]

    (Composable Diffusion's conjunction and negation); OR is the equal-weight
    mixture of its branches' composed densities. See the module docstring for
    nested groups and weights on groups.

    ``encode(texts) -> [len(texts), model.cond_dim]`` is the text encoder's
    pooled embedding; it is called once, here, on the distinct phrases, never
    per sampler step. Every leaf of the result is ``model`` under a condition,
    so the whole prompt, ORs included, runs as one batched network call
    (:mod:`compdiff.compose` groups the leaves of the whole tree). The embeddings and
    weights are array leaves and the phrases only labels, so prompts of one shape (same
    tree of operators, same phrase repeats, same zero-weight terms) are one pytree
    structure and share one compiled sampler.

    Raises ``ValueError`` for a malformed or improper prompt, an unconditional
    network, or an OR over a score-only (``eps``) network, all before any
    network (encoder included) runs.
    """
    tree = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if not isinstance(tree, _NODE_TYPES):
        raise TypeError(f"a prompt is a str or a prompt tree, got {type(prompt).__name__}")
    if not isinstance(prompt, str):
        check_proper(tree)
    if not isinstance(model, DiffusionModel) or not model.cond_dim:
        raise ValueError(f"compose_prompt needs a conditional network; "
                         f"{getattr(model, 'name', model)!r} takes no condition")
    if not (math.isfinite(scale) and scale >= 0):
        # A negative scale would turn NOT into the positive part the properness check relies on.
        raise ValueError(f"scale must be a finite number >= 0, got {scale}")
    if _contains_or(tree) and not model.has_log_prob:
        raise ValueError(
            f"prompt '{tree}' uses OR, a mixture, which needs each branch's log-density, but "
            f"{model.base_name} is score-only ({model.parameterization} parameterization); "
            "train it with an energy parameterization (energy_l2, energy_dae, energy_ip), "
            "or drop OR")
    texts = phrases(tree)
    embeddings = np.asarray(encode(list(texts)), np.float32)
    if embeddings.shape != (len(texts), model.cond_dim):
        raise ValueError(f"encode returned shape {embeddings.shape} for {len(texts)} phrases; "
                         f"{model.base_name} reads condition vectors of length {model.cond_dim}, "
                         f"so expected {(len(texts), model.cond_dim)}")
    # The phrase is the leaf's label, not part of its pytree structure: prompts of one shape
    # share one compiled sampler (compdiff.models.conditioning.Label).
    conditioned = {text: model.condition(e, label=text) for text, e in zip(texts, embeddings)}
    return _Composer(model.unconditional(), conditioned, float(scale)).density(tree)
