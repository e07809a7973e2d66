"""Training writes TensorBoard scalars (tensorboardX, no TensorFlow) equal to metrics.jsonl.

The event files are read back here without TensorBoard or TensorFlow: a
TFRecord file is a sequence of ``[uint64 length][uint32 crc][data][uint32 crc]``
records, each ``data`` an ``Event`` protobuf (tensorboardX ships the proto).
"""

import json
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from compdiff import train
from compdiff.testing import small_train_config


def _events(path: str) -> list[event_pb2.Event]:
    events = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack(
                "<I", header[8:])
            assert masked_crc32c(header[:8]) == length_crc, f"{path}: bad length checksum"
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(4))
            assert masked_crc32c(data) == data_crc, f"{path}: bad record checksum"
            events.append(event_pb2.Event.FromString(data))
    return events


def _scalars(tb_dir: str) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` over the event files in write order (a later one wins)."""
    out: dict[str, dict[int, float]] = {}
    for name in sorted(os.listdir(tb_dir), key=lambda n: os.path.getmtime(f"{tb_dir}/{n}")):
        for event in _events(os.path.join(tb_dir, name)):
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path):
    config = small_train_config(steps=10)
    config.train.update(log_every=5, checkpoint_every=5)
    train.train(config, str(tmp_path))
    config.train.steps = 20  # resumed: a second event file continues the curves
    train.train(config, str(tmp_path))

    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    scalars = _scalars(str(tmp_path / "tb"))
    assert len(os.listdir(tmp_path / "tb")) == 2
    assert sorted(scalars) == ["train/examples_per_sec", "train/loss", "train/lr",
                               "train/steps_per_sec"]
    steps = [r["step"] for r in records]
    assert steps == [5, 10, 15, 20]
    for key in ("loss", "steps_per_sec", "examples_per_sec"):
        logged = scalars[f"train/{key}"]
        assert sorted(logged) == steps, key
        # Event files hold float32: the metrics rounded to float32, exactly.
        np.testing.assert_array_equal([logged[s] for s in steps],
                                      np.float32([r[key] for r in records]), err_msg=key)
    assert set(scalars["train/lr"].values()) == {np.float32(config.train.lr)}
