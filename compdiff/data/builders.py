"""What every tfds builder of the project shares: build-or-reuse, random-access splits, a CLI.

The builders (``clevr_positions``, ``digits``, ``scene_classes``) write array_record
files under ``data_dir`` once and are read by random access with
``as_data_source`` (no TensorFlow); each module wraps these with its builder class.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable

import tensorflow_datasets as tfds


def config_names(builder_cls: type[tfds.core.GeneratorBasedBuilder]) -> list[str]:
    return [c.name for c in builder_cls.BUILDER_CONFIGS]


def prepare(builder_cls: type[tfds.core.GeneratorBasedBuilder], config_name: str,
            data_dir: str) -> tfds.core.GeneratorBasedBuilder:
    """Builds ``<name>/<config_name>`` under ``data_dir`` (or reuses it)."""
    names = config_names(builder_cls)
    if config_name not in names:
        raise ValueError(f"unknown {builder_cls.name} config {config_name!r}; known: "
                         f"{', '.join(names)}")
    builder = builder_cls(config=config_name, data_dir=os.fspath(data_dir),
                          file_format="array_record")
    builder.download_and_prepare()
    return builder


def data_source(builder_cls: type[tfds.core.GeneratorBasedBuilder], config_name: str,
                split: str, data_dir: str, splits: Iterable[str]):
    """Random-access source (``len(src)``, ``src[i]`` -> dict of numpy arrays) of a split."""
    splits = list(splits)
    if split not in splits:
        raise ValueError(f"unknown {builder_cls.name} split {split!r}; known: "
                         f"{', '.join(splits)}")
    return prepare(builder_cls, config_name, data_dir).as_data_source(split=split)


def build_main(builder_cls: type[tfds.core.GeneratorBasedBuilder], default_config: str,
               argv: list[str] | None = None) -> None:
    """``python -m compdiff.data.<name> --config=C --data_dir=D``: builds with a progress bar."""
    parser = argparse.ArgumentParser(description=f"Build the {builder_cls.name} tfds dataset.")
    parser.add_argument("--config", default=default_config, choices=config_names(builder_cls))
    parser.add_argument("--data_dir", required=True)
    args = parser.parse_args(argv)
    tfds.display_progress_bar(True)
    start = time.perf_counter()
    builder = prepare(builder_cls, args.config, args.data_dir)
    seconds = time.perf_counter() - start
    total = sum(split.num_examples for split in builder.info.splits.values())
    print(f"{builder_cls.name}/{args.config} at {builder.data_dir}: {total} examples in "
          f"{seconds:.1f} s ({total / max(seconds, 1e-9):.0f} examples/s; instant if it was "
          "already built)")
