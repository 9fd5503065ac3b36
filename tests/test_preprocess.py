"""End-to-end tests of preprocess/: the real CLIs on tiny random checkpoints and tiny generated videos.

The checkpoints are built once per session from transformers configs (hidden size 16, one or two layers, a
30-word WordLevel tokenizer, 32x32 images) and saved with save_pretrained exactly as hub checkpoints are,
so the loading, prompting, generation and feature code paths are the ones a GPU run with real
checkpoints takes; generated captions are gibberish, which is fine: these tests check plumbing, shapes,
determinism, resumption, sharding and failure handling.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch
import transformers
import av

from preprocess import captions, clip_features, io_utils, text_features  # noqa: E402
from preprocess.captioners import Captioner  # noqa: E402
from preprocess.instructions import TABLE_I, sample_instructions  # noqa: E402
from preprocess.llama_embedding import LlamaEmbedder, load_embedding_matrix  # noqa: E402
from preprocess.video_io import ClipReader, num_clips, sample_times  # noqa: E402
from tiny_models import FPS, build_checkpoints, frame_level, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DURATIONS = {"vid_a": 3, "vid_b": 5, "vid_c": 7}  # seconds -> 2, 3 and 4 clips of 2 s
QUERIES = [
    (11, "a person is walking a dog in the park", "vid_a"),
    (12, "a man cooks food in a kitchen", "vid_b"),
    (
        13,
        "the woman talks to the camera while a man cooks food in the kitchen of the park",
        "vid_c",
    ),
]


def write_annotations(path: Path, rows) -> Path:
  with open(path, "w") as f:
    for qid, query, vid in rows:
      f.write(
          json.dumps({"qid": qid, "query": query, "duration": DURATIONS.get(vid, 4), "vid": vid})
          + "\n"
      )
  return path


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> dict[str, Path]:
  return build_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("videos")
  for vid, seconds in DURATIONS.items():
    write_video(root / f"{vid}.mp4", seconds)
  return root


@pytest.fixture(scope="session")
def annotations(tmp_path_factory) -> Path:
  return write_annotations(tmp_path_factory.mktemp("annotations") / "val.jsonl", QUERIES)


def run_captions(videos: Path, model: Path, out: Path, *extra: str) -> int:
  return captions.main(
      ["--videos", str(videos), "--model", str(model), "--out", str(out), "--frames_per_clip", "2"]
      + ["--batch_size", "3", "--max_new_tokens", "3", "--seed", "7", *extra]
  )


# --- clips, instructions, sharding, atomic writes --------------------------------------------------------


def test_clip_plan_counts_partial_clips_and_centres_samples():
  assert [num_clips(d, 2.0) for d in (150.0, 150.0004, 150.3, 7.0, 0.5)] == [75, 75, 76, 4, 1]
  times = sample_times(5.0, 2.0, 2)
  np.testing.assert_allclose(times, [[0.5, 1.5], [2.5, 3.5], [4.25, 4.75]])


@pytest.mark.parametrize("first_pts", [0, 6])
def test_clip_reader_yields_the_frame_on_screen_at_each_sample_time(tmp_path, first_pts):
  write_video(tmp_path / "v.mp4", 7, first_pts)
  with ClipReader(tmp_path / "v.mp4", clip_len=2.0, frames_per_clip=2) as reader:
    assert reader.num_clips == 4
    clips = list(reader)
  assert len(clips) == 4 and all(c.shape == (2, 64, 64, 3) and c.dtype == np.uint8 for c in clips)
  # sample times 0.5, 1.5, 2.5, ... s after the first frame at 4 fps -> frames 2, 6, 10, ...
  expected = [[frame_level(int(t * FPS)) for t in row] for row in sample_times(7.0, 2.0, 2)]
  np.testing.assert_allclose(
      [[f.mean() for f in c] for c in clips], expected, atol=4
  )  # < half a step


# The paper's Table I (arXiv 2405.12540), typed out here rather than imported, so an edit of TABLE_I
# that drifts from the paper fails.
PAPER_TABLE_I = [
    "Describe the following video concisely.",
    "Present a brief overview of the provided video.",
    "Provide a concise description of the given video.",
    "Convey a short narrative summarizing the provided video.",
    "Summarize the visual content of the following video.",
    "Deliver a compact portrayal of the presented video.",
    "Furnish a concise explanation of the given video.",
    "Supply a brief account of the provided video.",
    "Narrate the contents of the video with precision.",
    "Offer a succinct analysis of the given video.",
]


def test_table_i_is_the_papers_list_in_order():
  assert list(TABLE_I) == PAPER_TABLE_I


def test_instructions_are_table_i_and_depend_only_on_seed_and_vid():
  first = sample_instructions(0, "vid_a", 50)
  assert first == sample_instructions(0, "vid_a", 50)
  assert set(first) <= set(TABLE_I) and len(set(first)) > 1
  assert first != sample_instructions(1, "vid_a", 50)
  assert first != sample_instructions(0, "vid_b", 50)


def test_shards_partition_the_sorted_keys():
  keys = [f"v{i}" for i in (5, 3, 9, 1, 7, 2, 8)]
  shards = [io_utils.shard_keys(reversed(keys), i, 3) for i in range(3)]
  assert shards[0] == sorted(keys)[0::3]
  assert sorted(sum(shards, [])) == sorted(keys)
  assert io_utils.shard_keys([10, 9, 100], 0, 2) == [9, 100]  # qids sort numerically
  with pytest.raises(ValueError):
    io_utils.shard_keys(keys, 3, 3)


def test_failed_write_leaves_neither_file_nor_temp(tmp_path):
  class Unconvertible:

    def __array__(self, *args, **kwargs):
      raise RuntimeError("boom")

  with pytest.raises(RuntimeError):
    io_utils.save_npz(tmp_path / "x.npz", features=Unconvertible())
  assert list(tmp_path.iterdir()) == []


def test_a_full_disk_stops_the_shard_and_keeps_the_finished_outputs(tmp_path, caplog):
  """One item's own failure is recorded and the run goes on; the disk's stops the run with one
  WriteError naming the output it was writing (every later item would fail the same way), and the
  outputs already written stay for the rerun to skip."""
  from lmr_jax.errors import WriteError  # noqa: PLC0415

  def out(key):
    return tmp_path / f"{key}.npz"

  def work(key, _):
    if key == "v2":
      raise RuntimeError("an unreadable video")
    if key == "v4":
      raise OSError(28, os.strerror(28), str(out(key)))
    io_utils.save_npz(out(key), features=np.ones((2, 3), np.float32))

  logger = logging.getLogger("test_preprocess")
  with pytest.raises(WriteError, match=r"v4.npz: not written: No space left on device \(ENOSPC\)"):
    io_utils.run_keys(
        "features", ["v1", "v2", "v3", "v4", "v5"], out, lambda: None, work=work, logger=logger
    )
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.npz", "v3.npz"]
  assert "features v2 failed: RuntimeError: an unreadable video" in caplog.text


# --- Llama embedding layer -------------------------------------------------------------------------------


def test_embedding_is_read_from_the_one_shard_that_holds_it(ckpt, monkeypatch):
  from preprocess import llama_embedding

  opened = []
  real_safe_open = llama_embedding.safe_open
  monkeypatch.setattr(
      llama_embedding,
      "safe_open",
      lambda path, **kw: opened.append(Path(path).name) or real_safe_open(path, **kw),
  )
  index = json.loads((ckpt["llama_sharded"] / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1  # really sharded
  sharded = load_embedding_matrix(ckpt["llama_sharded"])
  assert opened == [index["weight_map"]["model.embed_tokens.weight"]]
  full = transformers.LlamaForCausalLM.from_pretrained(ckpt["llama"]).get_input_embeddings().weight
  torch.testing.assert_close(sharded, full.detach())
  torch.testing.assert_close(load_embedding_matrix(ckpt["llama"]), full.detach())


def test_caption_vector_is_the_mean_of_its_non_special_token_vectors(ckpt):
  embedder = LlamaEmbedder(ckpt["llama"])
  ids = embedder.tokenizer("a man cooks food")["input_ids"]
  assert ids[0] == embedder.tokenizer.bos_token_id  # the tokenizer adds BOS, the features must not
  expected = embedder.matrix[ids[1:]].mean(0).numpy()
  np.testing.assert_allclose(embedder.mean_vector("a man cooks food"), expected, rtol=1e-6)
  assert embedder.token_vectors("a man cooks food </s>").shape == (4, 16)
  np.testing.assert_array_equal(embedder.mean_vector(""), np.zeros(16, np.float32))


# --- the CLIs end to end ---------------------------------------------------------------------------------


def test_video_llm_captions_then_text_features_match_the_layout(
    ckpt, videos, annotations, tmp_path
):
  out = tmp_path / "feat"
  assert run_captions(videos, ckpt["llava_next_video"], out, "--annotations", str(annotations)) == 0
  for vid, seconds in DURATIONS.items():
    record = json.loads((out / "captions" / f"{vid}.json").read_text())
    n = num_clips(seconds, 2.0)
    assert len(record["captions"]) == n and all(isinstance(c, str) for c in record["captions"])
    assert record["instructions"] == sample_instructions(7, vid, n)
    assert record["frames_per_clip"] == 2

  argv = [
      "--out",
      str(out),
      "--annotations",
      str(annotations),
      "--llama",
      str(ckpt["llama_sharded"]),
  ]
  assert text_features.main(argv + ["--clip", str(ckpt["clip"])]) == 0
  embedder = LlamaEmbedder(ckpt["llama"])
  for vid, seconds in DURATIONS.items():
    record = json.loads((out / "captions" / f"{vid}.json").read_text())
    with np.load(out / "caption_features" / f"{vid}.npz", allow_pickle=False) as npz:
      assert sorted(npz.files) == ["captions", "features", "instructions"]
      features = npz["features"]
      assert features.dtype == np.float32 and features.shape == (num_clips(seconds, 2.0), 16)
      assert npz["captions"].dtype.kind == "U" and npz["captions"].tolist() == record["captions"]
      assert npz["instructions"].tolist() == record["instructions"]
    np.testing.assert_allclose(
        features, [embedder.mean_vector(c) for c in record["captions"]], rtol=1e-6
    )
  for qid, query, _ in QUERIES:
    with np.load(out / "caption_query_features" / f"qid{qid}.npz") as npz:
      tokens = npz["last_hidden_state"]
    assert tokens.dtype == np.float32 and tokens.shape == (len(query.split()), 16)
    with np.load(out / "clip_text_features" / f"qid{qid}.npz") as npz:
      clip_tokens = npz["last_hidden_state"]
    # start + words + end, truncated to the tokenizer's 16 tokens (query 13 has 17 words)
    assert clip_tokens.dtype == np.float32 and clip_tokens.shape == (
        min(len(query.split()) + 2, 16),
        16,
    )


def test_image_llm_captions_the_middle_frame_of_each_clip(ckpt, videos, tmp_path):
  assert run_captions(videos, ckpt["llava"], tmp_path, "--shard", "1", "--num_shards", "2") == 0
  written = sorted(p.stem for p in (tmp_path / "captions").iterdir())
  assert written == sorted(DURATIONS)[1::2]
  record = json.loads((tmp_path / "captions" / f"{written[0]}.json").read_text())
  assert record["frames_per_clip"] == 1
  assert len(record["captions"]) == num_clips(DURATIONS[written[0]], 2.0)


def test_clip_features_shapes_shards_and_frame_averaging(ckpt, videos, tmp_path):
  argv = [
      "--videos",
      str(videos),
      "--clip",
      str(ckpt["clip"]),
      "--out",
      str(tmp_path),
      "--frames_per_clip",
      "2",
  ]
  for shard in ("0", "1"):
    assert (
        clip_features.main(argv + ["--shard", shard, "--num_shards", "2", "--batch_size", "3"]) == 0
    )
  assert sorted(p.stem for p in (tmp_path / "clip_features").iterdir()) == sorted(DURATIONS)
  encoder = clip_features.ClipImageEncoder(str(ckpt["clip"]), torch.device("cpu"), torch.float32)
  with ClipReader(videos / "vid_b.mp4", 2.0, 2) as reader:
    clips = list(reader)
  per_frame = encoder([frame[None] for clip in clips for frame in clip]).reshape(len(clips), 2, -1)
  with np.load(tmp_path / "clip_features" / "vid_b.npz") as npz:
    features = npz["features"]
  assert features.dtype == np.float32 and features.shape == (3, 8)
  np.testing.assert_allclose(features, per_frame.mean(1), rtol=1e-4, atol=1e-6)


def test_interrupted_run_keeps_finished_videos_and_resumes(
    ckpt, videos, tmp_path, monkeypatch, caplog
):
  calls = []
  real_caption = Captioner.caption

  def caption_until_second_video(self, clips, instructions):
    calls.append(len(clips))
    if len(calls) == 2:  # vid_a is one batch; interrupt in the middle of vid_b
      raise KeyboardInterrupt
    return real_caption(self, clips, instructions)

  monkeypatch.setattr(Captioner, "caption", caption_until_second_video)
  with pytest.raises(KeyboardInterrupt):
    run_captions(videos, ckpt["llava"], tmp_path)
  monkeypatch.undo()
  out_dir = tmp_path / "captions"
  assert [p.name for p in out_dir.iterdir()] == ["vid_a.json"]  # no partial or temporary file
  finished = (out_dir / "vid_a.json").stat().st_mtime_ns

  caplog.set_level("INFO")
  assert run_captions(videos, ckpt["llava"], tmp_path) == 0
  assert sorted(p.name for p in out_dir.iterdir()) == ["vid_a.json", "vid_b.json", "vid_c.json"]
  assert (out_dir / "vid_a.json").stat().st_mtime_ns == finished
  assert "captions: 2 written, 1 already done, 0 failed" in caplog.text


@pytest.mark.slow
def test_unreadable_and_missing_videos_are_reported_and_the_rest_finish(ckpt, videos, tmp_path):
  video_dir = tmp_path / "videos"
  video_dir.mkdir()
  for vid in DURATIONS:
    os.symlink(videos / f"{vid}.mp4", video_dir / f"{vid}.mp4")
  (video_dir / "corrupt.mp4").write_bytes(b"\x00not a video" * 64)
  rows = [(1, "a", "vid_a"), (2, "b", "corrupt"), (3, "c", "missing"), (4, "d", "vid_c")]
  anns = write_annotations(tmp_path / "ann.jsonl", rows)
  out = tmp_path / "feat"
  cmd = [
      sys.executable,
      "-m",
      "preprocess.clip_features",
      "--videos",
      str(video_dir),
      "--clip",
      str(ckpt["clip"]),
  ]
  result = subprocess.run(
      cmd + ["--out", str(out), "--annotations", str(anns)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 1, result.stderr
  assert sorted(p.stem for p in (out / "clip_features").iterdir()) == ["vid_a", "vid_c"]
  error_lines = [
      line for line in result.stderr.splitlines() if "clip_features corrupt failed" in line
  ]
  assert len(error_lines) == 1 and "InvalidDataError" in error_lines[0]
  assert "clip_features missing failed: FileNotFoundError" in result.stderr
  assert "clip_features: 2 written, 0 already done, 2 failed" in result.stderr


def test_outputs_load_with_the_jax_side_readers(ckpt, videos, annotations, tmp_path):
  import lmr_jax.data.features as features_lib

  out = tmp_path / "feat"
  assert run_captions(videos, ckpt["llava"], out) == 0
  models = ["--llama", str(ckpt["llama"]), "--clip", str(ckpt["clip"])]
  assert text_features.main(["--out", str(out), "--annotations", str(annotations), *models]) == 0
  assert (
      clip_features.main(["--videos", str(videos), "--clip", str(ckpt["clip"]), "--out", str(out)])
      == 0
  )
  spec = features_lib.FeatureSpec(
      feat_root=str(out),
      visual_streams=("clip_features",),
      visual_dims=(8,),
      query_feat_dir="clip_text_features",
      query_dim=16,
      caption_feat_dir="caption_features",
      caption_query_feat_dir="caption_query_features",
      caption_dim=16,
      clip_len=2.0,
      caption_clip_len=2.0,
      max_clips=75,
      max_query_tokens=32,
  )
  for vid, seconds in DURATIONS.items():
    loaded = features_lib.load_video(spec, vid, with_captions=True)
    assert loaded.num_clips_on_disk == num_clips(seconds, 2.0)
    assert loaded.visual.shape == (num_clips(seconds, 2.0), 8 + 2) and loaded.caption.shape[1] == 16
  for qid, _, _ in QUERIES:
    assert features_lib.load_query_tokens(spec, qid, caption_encoder=True).shape[1] == 16
    assert features_lib.load_query_tokens(spec, qid, caption_encoder=False).shape[1] == 16


def test_charades_default_reads_the_llama_query_tokens_of_preprocess(ckpt, annotations, tmp_path):
  """configs/charades.py (paper setting) gives the visual VQF the query's Llama embedding tokens:
  the caption_query_features files of `text_features --llama --annotations`, read for both VQFs."""
  import lmr_jax.data.features as features_lib
  import lmr_jax.data.dataset as dataset
  from configs import charades

  out = tmp_path / "feat"
  argv = ["--out", str(out), "--annotations", str(annotations), "--llama", str(ckpt["llama"])]
  assert text_features.main(argv) == 0  # no captions yet: only the query tokens are written
  assert sorted(p.name for p in out.iterdir()) == ["caption_query_features"]
  data = charades.get_config().data
  assert data.query_feat_dir == data.caption_query_feat_dir == "caption_query_features"
  assert data.query_dim == data.caption_dim == 4096  # Llama-7B's embedding width
  data.feat_root = str(out)
  data.query_dim = data.caption_dim = 16  # the tiny Llama's
  spec = features_lib.FeatureSpec.from_config(data)
  llama = LlamaEmbedder(ckpt["llama"])
  for qid, query, _ in QUERIES:
    tokens = features_lib.load_query_tokens(spec, qid, caption_encoder=False)
    np.testing.assert_array_equal(tokens, llama.token_vectors(query)[: data.max_query_tokens])
    caption_tokens = features_lib.load_query_tokens(spec, qid, caption_encoder=True)
    np.testing.assert_array_equal(tokens, caption_tokens)
  glove = charades.get_config("vgg_glove").data
  assert (glove.query_feat_dir, glove.query_dim) == ("clip_text_features", 300)
  assert glove.visual_streams == data.visual_streams
