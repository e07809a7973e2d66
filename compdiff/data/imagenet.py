"""ImageNet for TPU users: tfds ``imagenet2012`` and ``imagenet_resized``, read without TensorFlow.

Configs (``data.builder_config``), each a tfds dataset and a resolution ``R``:

- ``resized32`` / ``resized64``: ``imagenet_resized/32x32`` / ``64x64`` (Chrabaszcz et al.
  2017, box-resized; tfds downloads them, about 4 / 13 GB), already at ``R``.
- ``2012_64`` / ``2012_128`` / ``2012_256``: ``imagenet2012`` (ILSVRC 2012, 1.28M training
  and 50k validation images) resized and centre-cropped to ``R`` (128: RRR appendix G).
  tfds cannot download it: put ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``
  in a manual directory (tfds's default is ``<data_dir>/downloads/manual``; or pass
  ``--manual_dir`` / set ``COMPDIFF_IMAGENET_MANUAL_DIR``) and build it once::

      python -m compdiff.data.imagenet --config=2012_128 --data_dir=gs://bucket/tfds \\
          --manual_dir=/path/to/tars

Records are ``{"image": uint8 [R, R, 3], "label": int32}`` (labels 0..999 in tfds's
order, the sorted WordNet ids), so :mod:`compdiff.data.examples`' ``image_class`` /
``class_label`` apply as for the small datasets. Splits: ``train``, and ``test`` = tfds's
``validation`` (the labelled held-out split; ImageNet's test labels are not public).

Resize and crop (ADM's ``center_crop_arr``, guided-diffusion, which the FID reference
batches of ImageNet 64/128/256 use): halve the image with a box filter while its shorter
side is at least ``2 R``, resize bicubically so the shorter side is ``R``, and cut the
central ``R x R``. It runs per record inside the source (:class:`ResizedSource`), before
any example function, because the training loop reads the image shape of the first record
to build the UNet; ImageNet's images all differ in size.

No TensorFlow. The sources come from ``builder.as_data_source`` (array_record files,
random access): the builder must be prepared with ``file_format="array_record"``, which
:func:`prepare` does (a copy prepared as TFRecord, the tfds default, cannot be read by
random access; rebuild it). tfds decodes the JPEG bytes of ``imagenet2012`` in numpy with
PIL (``tfds.features.Image.decode_example_np``); TensorFlow is never imported. Tested
offline with ``tfds.testing.mock_data`` (random records of the real feature specs).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# config -> (tfds name, resolution)
CONFIGS: dict[str, tuple[str, int]] = {
    "resized32": ("imagenet_resized/32x32", 32),
    "resized64": ("imagenet_resized/64x64", 64),
    "2012_64": ("imagenet2012", 64),
    "2012_128": ("imagenet2012", 128),
    "2012_256": ("imagenet2012", 256),
}
NUM_CLASSES = 1000
_SPLITS = {"train": "train", "test": "validation", "validation": "validation"}
MANUAL_DIR_ENV = "COMPDIFF_IMAGENET_MANUAL_DIR"


def center_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """ADM's ``center_crop_arr``: uint8 ``[H, W, 3]`` -> ``[R, R, 3]`` (see the module doc)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    pil = Image.fromarray(image.astype(np.uint8))
    while min(pil.size) >= 2 * resolution:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    scale = resolution / min(pil.size)
    pil = pil.resize(tuple(max(resolution, round(s * scale)) for s in pil.size),
                     resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


class ResizedSource:
    """A random-access source whose records are ``{"image": [R, R, 3] uint8, "label": int32}``."""

    def __init__(self, source: Any, resolution: int):
        self.source, self.resolution = source, resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self.source[index]
        image = np.asarray(record["image"])
        if image.shape[:2] != (self.resolution, self.resolution):
            image = center_crop(image, self.resolution)
        return {"image": image, "label": np.int32(record["label"])}

    def __repr__(self) -> str:
        return f"ResizedSource({self.source!r}, resolution={self.resolution})"


def _check(config_name: str) -> tuple[str, int]:
    if config_name not in CONFIGS:
        raise ValueError(f"unknown imagenet config {config_name!r}; known: "
                         f"{', '.join(CONFIGS)}")
    return CONFIGS[config_name]


def prepare(config_name: str, data_dir: str, manual_dir: str | None = None):
    """The tfds builder of ``config_name`` in ``data_dir``, prepared as array_record.

    ``imagenet2012`` is built from the tars in ``manual_dir`` (default:
    ``$COMPDIFF_IMAGENET_MANUAL_DIR``, else tfds's ``<data_dir>/downloads/manual``).
    """
    name, _ = _check(config_name)
    builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
    manual_dir = manual_dir or os.environ.get(MANUAL_DIR_ENV) or None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
    return builder


def data_source(config_name: str, split: str, data_dir: str) -> ResizedSource:
    """Random-access source of ``split`` (``train`` or ``test`` = validation) at the config's
    resolution."""
    _, resolution = _check(config_name)
    if split not in _SPLITS:
        raise ValueError(f"unknown imagenet split {split!r}; known: {', '.join(_SPLITS)}")
    source = prepare(config_name, data_dir).as_data_source(split=_SPLITS[split])
    return ResizedSource(source, resolution)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Prepare an ImageNet tfds dataset "
                                                 "(array_record) for compdiff.")
    parser.add_argument("--config", default="resized64", choices=list(CONFIGS))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--manual_dir", default=None,
                        help="directory with ILSVRC2012_img_{train,val}.tar (imagenet2012)")
    args = parser.parse_args(argv)
    builder = prepare(args.config, args.data_dir, args.manual_dir)
    print(f"{builder.info.full_name} at {builder.data_dir}: "
          f"{ {s: v.num_examples for s, v in builder.info.splits.items()} }")


if __name__ == "__main__":
    main()
