"""The evaluation classifier of the text-to-image setup: which concepts are in the image?

``--config=configs/models/text2image_classifier.py:<tiny|cpu|paper>``: a multi-label classifier
with one output per concept of :mod:`.captioned_scenes`, a ``(shape, colour)`` pair (12
outputs, :func:`compdiff.data.examples.concept_index`), trained with one logistic loss per
output on the image's multi-hot presence labels (example ``concept_labels``). A generated
image is correct for a prompt when every AND-ed concept is classified present (p > 0.5) and
every NOT-ed one absent (:func:`compdiff.evaluation.concepts.prompt_correct`).

It is a clean classifier ``p(concept | x)`` of finished samples, trained on the ``_all``
builder configs, whose ``train`` split keeps every pair: it must recognise the pairs that
the generator's ``train`` split held out, since those are the prompts the table asks about.

Why multi-label and not a query. A first version read the asked concept as a vector by FiLM
(``model.query = "vector"``, one output; example ``concept_presence``, one query per image).
On ``32px_all`` it stayed at 0.81 held out: it answered "is the queried colour present" and
was wrong on 98% of the queries whose colour sat on another shape (one bit per image is too
little shape signal). Twelve labels per image give the shape signal that was missing.
``cpu`` reads ``32px_large_all`` (large objects only, 5 to 7 pixels across): on ``32px_all``
a small object is about 3 pixels across and its shape is not legible, which caps any
classifier near 0.91 on the hard queries.

- ``tiny``: ``tiny_all`` (16 px), a tiny network, 2 steps; for tests.
- ``cpu``: ``32px_large_all``, channels 32, batch 64.
- ``paper``: ``64px_all`` (both sizes) for an accelerator.

Held-out accuracy: ``python scripts/classifier_accuracy.py --workdir=DIR``
(:func:`compdiff.evaluation.concepts.evaluate`: hard balanced queries, every concept of
every image, and
the held-out pairs on their own).
"""

from __future__ import annotations

import ml_collections

from compdiff.data import examples
from configs import common

SIZES = ("tiny", "cpu", "paper")
DEFAULT_DATA_DIR = "~/compdiff_data"


def parse_variant(arg: str | None) -> str:
    """``"cpu"`` -> ``"cpu"`` (the default); anything but a size is an error."""
    return common.parse_variant(arg or "cpu", words={"size": SIZES}, required=("size",))["size"]

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = parse_variant(arg)
    config = ml_collections.ConfigDict()
    config.task = "classifier"

    config.data = ml_collections.ConfigDict()
    config.data.source = "captioned_scenes"
    config.data.builder_config = {"tiny": "tiny_all", "cpu": "32px_large_all",
                                  "paper": "64px_all"}[size]
    config.data.data_dir = DEFAULT_DATA_DIR
    config.data.example = "concept_labels"

    config.model = ml_collections.ConfigDict()
    config.model.network = "classifier"
    config.model.parameterization = "eps"  # unused: a classifier has no parameterization
    config.model.query = "none"
    config.model.num_outputs = examples.NUM_CONCEPTS
    config.model.channels = {"tiny": 8, "cpu": 32, "paper": 64}[size]
    config.model.channel_mult = {"tiny": (1, 2), "cpu": (1, 2, 2), "paper": (1, 2, 2, 2)}[size]
    config.model.noise_conditional = False

    config.schedule = ml_collections.ConfigDict()  # unused by a clean classifier
    config.schedule.name = "linear"
    config.schedule.num_levels = 100

    config.train = ml_collections.ConfigDict()
    config.train.steps = {"tiny": 2, "cpu": 1500, "paper": 20_000}[size]
    config.train.batch_size = {"tiny": 8, "cpu": 64, "paper": 512}[size]
    config.train.lr = 1e-3
    config.train.ema_decay = {"tiny": 0.9, "cpu": 0.99, "paper": 0.999}[size]
    config.train.grad_clip = 10.0
    config.train.log_every = {"tiny": 1, "cpu": 100, "paper": 500}[size]
    config.train.checkpoint_every = {"tiny": 2, "cpu": 500, "paper": 2000}[size]
    config.train.keep_checkpoints = 2
    config.train.seed = 0
    return config
