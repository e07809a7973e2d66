"""A small grammar for compositions of named models, parsed without ``eval``.

::

    expr   := term ("+" term)*              mixture, equal weights (flattened: a+(b+c)
                                            weighs each 1/3, as the + operator does)
    term   := factor (("*" | "/") factor)*  product; "/" negates the factor's weight
    factor := atom ("^" number)?            weight (tempering)
    atom   := NAME | "(" expr ")"

So ``ring*bar`` is the product, ``left + right`` the mixture and
``ring / half^0.5`` RRR's negation ``log p_ring - 0.5 log p_half``. Names are
looked up in a mapping of :class:`~compdiff.compose.Density` objects; anything
else is a :class:`ValueError` that points at the offending position.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Mapping

from compdiff import compose
from compdiff.compose import Density

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[*/+^()]))")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected character {text[pos:].lstrip()[:1]!r} at position "
                             f"{pos} in {text!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, leaves: Mapping[str, Density]):
        self.text, self.leaves, self.tokens, self.i = text, leaves, _tokens(text), 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _error(self, what: str) -> ValueError:
        tok = self._peek()
        where = f"at position {tok[2]} ({tok[1]!r})" if tok else "at the end"
        return ValueError(f"{what} {where} in {self.text!r}")

    def _take(self, kind: str, value: str | None = None) -> str | None:
        tok = self._peek()
        if tok and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return tok[1]
        return None

    def parse(self) -> Density:
        if not self.tokens:
            raise ValueError("empty composition expression")
        density = self._expr()
        if self._peek() is not None:
            raise self._error("unexpected token")
        return density

    def _expr(self) -> Density:
        terms = [self._term()]
        while self._take("op", "+"):
            terms.append(self._term())
        return functools.reduce(operator.add, terms)

    def _term(self) -> Density:
        factors, weights = [], []
        sign = 1.0
        while True:
            density, weight = self._factor()
            factors.append(density)
            weights.append(sign * weight)
            if self._take("op", "*"):
                sign = 1.0
            elif self._take("op", "/"):
                sign = -1.0
            else:
                break
        if len(factors) == 1 and weights[0] == 1.0:
            return factors[0]
        return compose.product(factors, weights)

    def _factor(self) -> tuple[Density, float]:
        density = self._atom()
        if self._take("op", "^"):
            number = self._take("num")
            if number is None:
                raise self._error("expected a number after '^'")
            return density, float(number)
        return density, 1.0

    def _atom(self) -> Density:
        if self._take("op", "("):
            density = self._expr()
            if not self._take("op", ")"):
                raise self._error("expected ')'")
            return density
        name = self._take("name")
        if name is None:
            raise self._error("expected a model name or '('")
        if name not in self.leaves:
            raise ValueError(f"unknown model {name!r} in {self.text!r}; known: "
                             f"{sorted(self.leaves)}")
        return self.leaves[name]


def parse(text: str, leaves: Mapping[str, Density]) -> Density:
    """The composition ``text`` over the named ``leaves``, e.g. ``"ring / half^0.5"``."""
    return _Parser(text, leaves).parse()


def names(text: str) -> list[str]:
    """The model names ``text`` mentions, in order of first appearance."""
    return list(dict.fromkeys(v for kind, v, _ in _tokens(text) if kind == "name"))
