"""preprocess.slowfast and preprocess.slowfast_features: the release extractor's frame choice, the
network loading a randomly initialised checkpoint written in the model zoo's Caffe2 format (and as a
PySlowFast .pyth), and the CLI on generated videos: shapes, the clip plan of the CLIP features,
sharding and resume. Frames are cropped to 64 instead of 224 pixels here (the network pools globally),
so the CPU runs it in seconds."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess import slowfast, slowfast_features  # noqa: E402
from preprocess.video_io import ClipReader  # noqa: E402
from tiny_models import write_video  # noqa: E402

DURATIONS = {"vid_a": 3, "vid_b": 5, "vid_c": 7}  # seconds -> 2, 3 and 4 clips of 2 s
_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def test_frames_are_the_release_extractors_and_depend_on_the_source_rate():
  index = lambda fps: np.rint(slowfast_features.frame_offsets(fps) * 30).astype(int).tolist()  # noqa: E731
  # 30 fps: linspace(0, 63, 32) over the clip's 60 frames, the last two clamped to frame 59
  assert index(30) == list(range(0, 60, 2)) + [59, 59]
  assert index(29.97) == index(29) and index(29)[-3:] == [56, 58, 59]
  assert max(index(25)) == 52 and len(index(25)) == 32  # only the first 1.75 s at 25 fps
  assert slowfast_features.slow_indices().tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


def _caffe2_blob(name: str, blocks: dict[int, int]) -> str | None:
  """The model zoo's blob name of a PySlowFast parameter (written here from the naming of the
  released .pkl files, independently of the module's table)."""
  stem = re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)\.(\w+)", name)
  if stem:
    prefix = "t_" if stem[1] == "1" else ""
    return f"{prefix}conv1_w" if stem[2] == "conv" else f"{prefix}res_conv1_bn_{_C2_BN[stem[3]]}"
  fuse = re.fullmatch(r"s(\d)_fuse\.(conv_f2s|bn)\.(\w+)", name)
  if fuse:
    stage = int(fuse[1])
    base = (
        "t_pool1_subsample"
        if stage == 1
        else f"t_res{stage}_{blocks[stage] - 1}_branch2c_bn_subsample"
    )
    return f"{base}_w" if fuse[2] == "conv_f2s" else f"{base}_bn_{_C2_BN[fuse[3]]}"
  block = re.fullmatch(
      r"s(\d)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.\w+)\.(\w+)", name
  )
  prefix = "t_" if block[2] == "1" else ""
  base = f"{prefix}res{block[1]}_{block[3]}_"
  part, tensor = block[4], block[5]
  if part == "branch1":
    return base + "branch1_w"
  if part == "branch1_bn":
    return base + f"branch1_bn_{_C2_BN[tensor]}"
  conv = part.split(".")[1]  # a, a_bn, b, ...
  if conv.endswith("_bn"):
    return base + f"branch2{conv[0]}_bn_{_C2_BN[tensor]}"
  return base + f"branch2{conv}_w"


def _random_model(seed: int = 0) -> slowfast.SlowFastR50:
  torch.manual_seed(seed)
  model = slowfast.SlowFastR50()
  for module in model.modules():  # batch-norm statistics that are not the identity
    if isinstance(module, torch.nn.BatchNorm3d):
      module.running_mean.uniform_(-0.1, 0.1)
      module.running_var.uniform_(0.5, 1.5)
      module.weight.data.uniform_(0.5, 1.5)
      module.bias.data.uniform_(-0.1, 0.1)
  return model.eval()


def _write_caffe2(model: slowfast.SlowFastR50, path: Path, drop: str | None = None) -> Path:
  blocks = {n: b for n, b in zip(range(2, 6), slowfast.BLOCKS)}
  blobs = {
      _caffe2_blob(name, blocks): tensor.numpy().copy()
      for name, tensor in model.state_dict().items()
      if not name.endswith("num_batches_tracked") and name != drop
  }
  # what else a model zoo file holds: the classifier and the training run's state
  blobs |= {"pred_w": np.zeros((400, 2304), np.float32), "pred_b": np.zeros(400, np.float32)}
  blobs |= {"conv1_w_momentum": np.zeros(1, np.float32), "lr": np.ones(1), "model_iter": np.ones(1)}
  with open(path, "wb") as f:
    pickle.dump({"blobs": blobs}, f)
  return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[slowfast.SlowFastR50, Path]:
  model = _random_model()
  return model, _write_caffe2(model, tmp_path_factory.mktemp("slowfast") / "SLOWFAST_8x8_R50.pkl")


@pytest.mark.slow
def test_a_caffe2_or_pyth_checkpoint_loads_into_the_same_network(checkpoint, tmp_path):
  model, pkl = checkpoint
  slow, fast = torch.randn(2, 3, 8, 64, 64), torch.randn(2, 3, 32, 64, 64)
  with torch.inference_mode():
    expected = model(slow, fast)
    assert expected.shape == (2, slowfast.FEATURE_DIM) == (2, 2304)
    torch.testing.assert_close(slowfast.load(pkl)(slow, fast), expected)
    pyth = tmp_path / "SLOWFAST_8x8_R50.pyth"
    state = dict(model.state_dict(), **{"head.projection.weight": torch.zeros(400, 2304)})
    torch.save({"epoch": 196, "model_state": state}, pyth)
    torch.testing.assert_close(slowfast.load(pyth)(slow, fast), expected)
  assert (expected >= 0).all()  # averages of ReLU maps, as the release's features


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m, p: p.write_bytes(b"not a pickle"), "not a Caffe2 model zoo checkpoint"),
        (
            lambda m, p: _write_caffe2(m, p, drop="s3.pathway1_res2.branch2.b.weight"),
            "1 of the network's 550 tensors are not in the checkpoint (first: "
            "s3.pathway1_res2.branch2.b.weight)",
        ),
    ],
)
def test_a_checkpoint_that_is_not_slowfast_r50_is_one_line(checkpoint, tmp_path, make, message):
  path = tmp_path / "bad.pkl"
  make(checkpoint[0], path)
  with pytest.raises(slowfast.CheckpointError) as error:
    slowfast.load(path)
  assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
  assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("videos")
  for vid, seconds in DURATIONS.items():
    write_video(root / f"{vid}.mp4", seconds)
  return root


@pytest.mark.slow
def test_cli_writes_the_clip_plan_of_the_clip_features_sharded_and_resumed(
    checkpoint, videos, tmp_path, monkeypatch, caplog
):
  monkeypatch.setattr(slowfast_features, "SIZE", 64)
  argv = ["--videos", str(videos), "--checkpoint", str(checkpoint[1]), "--out", str(tmp_path)]
  argv += ["--batch_size", "3"]
  assert slowfast_features.main(argv + ["--shard", "1", "--num_shards", "2"]) == 0
  written = tmp_path / "slowfast_features"
  assert sorted(p.stem for p in written.iterdir()) == ["vid_b"]  # shard 1 of the sorted vids
  caplog.set_level("INFO")
  assert slowfast_features.main(argv) == 0  # the rest; vid_b is kept
  assert "slowfast_features: 2 written, 1 already done, 0 failed" in caplog.text
  for vid, seconds in DURATIONS.items():
    with np.load(written / f"{vid}.npz") as npz:
      features = npz["features"]
    with ClipReader(videos / f"{vid}.mp4", 2.0) as reader:  # the CLIP features' clip plan
      assert features.shape == (reader.num_clips, 2304) and features.dtype == np.float16
  # the values: the network on each clip's 32 frames, preprocessed as the release's extractor does
  encoder = slowfast_features.SlowFastEncoder(
      str(checkpoint[1]), torch.device("cpu"), torch.float32
  )
  with ClipReader(videos / "vid_c.mp4", 2.0, offsets=slowfast_features.frame_offsets) as reader:
    clips = list(reader)
  assert all(c.shape == (32, 64, 64, 3) for c in clips)
  with np.load(written / "vid_c.npz") as npz:
    np.testing.assert_allclose(npz["features"], encoder(clips).astype(np.float16), rtol=1e-3)


def test_preprocessing_resizes_the_short_side_crops_the_centre_and_normalises():
  frames = np.zeros((2, 120, 200, 3), np.uint8)
  frames[:, :, 100:] = 255  # right half white: the centre crop is half black, half white
  pixels = slowfast_features.preprocess_frames(frames)
  assert pixels.shape == (3, 2, 224, 224)
  low, high = (0 - 0.45) / 0.225, (1 - 0.45) / 0.225
  torch.testing.assert_close(pixels[:, :, :, 0].min(), torch.tensor(low))
  torch.testing.assert_close(pixels[:, :, :, -1].max(), torch.tensor(high))
  # 200x120 -> 373x224, crop from x=74: the white half starts at 186.5-74 = 112.5
  assert pixels[0, 0, 100, 105] < 0 < pixels[0, 0, 100, 120]


@pytest.fixture(scope="module")
def slowfast_clip_trained(tmp_path_factory):
  """(config, workdir) of a tiny model that reads SlowFast (2304) + CLIP features, as
  configs/qvh.py, trained for one epoch on synthetic data of those widths."""
  from conftest import CLIP_ONLY_DATA, tiny_config
  from lmr_jax.commands import train as train_lib
  from lmr_jax.data import synthetic

  root = tmp_path_factory.mktemp("slowfast_clip")
  synthetic.generate(dataclasses.replace(CLIP_ONLY_DATA, slowfast_dim=2304), str(root / "data"))
  config = tiny_config(str(root / "data"))
  config.data.visual_streams = ("slowfast_features", "clip_features")
  config.data.visual_dims = (slowfast.FEATURE_DIM, CLIP_ONLY_DATA.clip_dim)
  config.data.query_dim = config.data.caption_dim = CLIP_ONLY_DATA.text_dim
  config.data.max_clips = CLIP_ONLY_DATA.max_clips
  config.num_epochs = 1
  train_lib.train_and_evaluate(config, str(root / "workdir"))
  return config, str(root / "workdir")


@pytest.mark.slow
def test_predict_takes_a_raw_video_for_a_slowfast_and_clip_model(
    checkpoint, slowfast_clip_trained, tiny_hf_models, tmp_path, capsys, monkeypatch
):
  """predict.py --video on a model that reads SlowFast + CLIP features: both streams written on one
  clip plan, and the moments those files give through --features."""
  from conftest import entry_point
  from lmr_jax import cli

  monkeypatch.setattr(slowfast_features, "SIZE", 64)
  _, workdir = slowfast_clip_trained
  write_video(tmp_path / "v.mp4", 5)  # 3 clips
  models = [
      f"--clip={tiny_hf_models['clip']}",
      f"--llama={tiny_hf_models['llama']}",
      f"--captioner={tiny_hf_models['llava']}",
      "--max_new_tokens=3",
  ]
  saved = tmp_path / "features"
  with entry_point("predict.py") as predict:

    def run(*argv):
      capsys.readouterr()
      status = cli.run_absl(predict.main, predict.__doc__, ["predict.py", *argv])
      out, err = capsys.readouterr()
      assert status == 0, err
      return json.loads(out.splitlines()[0])

    from_video = run(
        f"--workdir={workdir}",
        f"--video={tmp_path / 'v.mp4'}",
        f"--slowfast={checkpoint[1]}",
        f"--save_features={saved}",
        "--query=a man cooks food in a kitchen",
        *models,
    )
    from_files = run(
        f"--workdir={workdir}",
        f"--features={saved}",
        "--vid=v",
        "--duration=5",
        "--query=a man cooks food in a kitchen",
        *models,
    )
  for stream, width in (("slowfast_features", 2304), ("clip_features", 16)):
    with np.load(saved / stream / "v.npz") as npz:
      assert npz["features"].shape == (3, width)
  assert len(from_video["pred_saliency_scores"]) == 3
  assert from_video["pred_relevant_windows"] == from_files["pred_relevant_windows"]
