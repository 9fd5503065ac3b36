"""Annotation parsing (real fixtures), feature validation, padding/masks, determinism, sharding."""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, TINY_SYNTHETIC, tiny_config
from lmr_jax.data import annotations as annotations_lib
from lmr_jax.data import dataset, features, order, pipeline, synthetic
from lmr_jax.data.annotations import DataError
from lmr_jax.data.examples import ExampleSource, saliency_pairs
from lmr_jax.data.position import DataPosition

REAL_FILES = {
    "highlight_train_release.jsonl": (5, True),
    "highlight_val_release.jsonl": (4, True),
    "highlight_test_release.jsonl": (4, False),
    "highlight_test_with_gt.jsonl": (4, True),
    "charades_sta_train_tvr_format.jsonl": (4, True),
    "charades_sta_test_tvr_format.jsonl": (4, True),
}


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_annotation_files_parse(name):
  path = os.path.join(FIXTURES, "annotations", name)
  anns = annotations_lib.load_annotations(path)
  count, labelled = REAL_FILES[name]
  with open(path) as f:
    raw = [json.loads(line) for line in f if line.strip()]
  assert len(anns) == len(raw) == count
  for a, r in zip(anns, raw):  # every field as the file has it, read without our parser
    assert (a.qid, a.query, a.vid, a.duration) == (r["qid"], r["query"], r["vid"], r["duration"])
    assert [list(w) for w in a.windows] == r.get("relevant_windows", [])
    assert list(a.relevant_clip_ids) == r.get("relevant_clip_ids", [])
    assert [list(s) for s in a.saliency_scores] == r.get("saliency_scores", [])
    assert a.has_labels == labelled
    assert a.to_record() == {k: v for k, v in r.items() if k in a.to_record()}


def test_qvh_line_fields():
  anns = annotations_lib.load_annotations(
      os.path.join(FIXTURES, "annotations", "highlight_val_release.jsonl")
  )
  first = anns[0]
  assert (first.qid, first.vid, first.duration) == (2579, "NUsG9BgSes0_210.0_360.0", 150.0)
  assert first.windows == ((82.0, 150.0),)
  assert first.relevant_clip_ids[0] == 41 and first.saliency_scores[0] == (1, 1, 2)
  many = annotations_lib.load_annotations(
      os.path.join(FIXTURES, "annotations", "highlight_train_release.jsonl")
  )[-1]
  assert len(many.windows) == 24


GOOD = {
    "qid": 1,
    "query": "a man cooks",
    "duration": 20,
    "vid": "v1",
    "relevant_windows": [[2, 6]],
    "relevant_clip_ids": [1, 2],
    "saliency_scores": [[1, 2, 3]] * 2,
}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"qid": 1, "query": ', "malformed JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "vid"}), "missing key 'vid'"),
        (json.dumps(dict(GOOD, query="  ")), "empty query"),
        (json.dumps(dict(GOOD, relevant_windows=[[15, 25]])), "outside [0, duration=20]"),
        (json.dumps(dict(GOOD, relevant_windows=[[-1, 5]])), "outside"),
        (json.dumps(dict(GOOD, relevant_windows=[[6, 6]])), "or empty"),
        (json.dumps(dict(GOOD, duration=-3)), "'duration' must be a positive number"),
        (json.dumps(dict(GOOD, qid="7")), "'qid' must be an integer"),
        (json.dumps(dict(GOOD, saliency_scores=[[1, 2, 3]])), "2 relevant_clip_ids but 1"),
        (json.dumps(dict(GOOD, saliency_scores=[[1, 9, 3]] * 2)), "must be integers in [0, 4]"),
        (json.dumps(GOOD), "duplicate qid 1 (first at line 1)"),
    ],
)
def test_bad_annotation_line_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "ann.jsonl"
  path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
  with pytest.raises(DataError) as e:
    annotations_lib.load_annotations(path)
  text = str(e.value)
  assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text


def _spec(root, **changes):
  values = dict(
      feat_root=root,
      visual_streams=("a", "b"),
      visual_dims=(4, 3),
      query_feat_dir="q",
      query_dim=5,
      caption_feat_dir="c",
      caption_query_feat_dir="cq",
      caption_dim=6,
      clip_len=2.0,
      caption_clip_len=2.0,
      max_clips=8,
      max_query_tokens=4,
  )
  values.update(changes)
  return features.FeatureSpec(**values)


def _source(anns, spec, *, with_captions, preload=True, **kwargs):
  store = features.NpzStore(spec, with_captions)
  return ExampleSource(anns, store, spec, with_captions=with_captions, preload=preload, **kwargs)


def _write(root, directory, name, **arrays):
  os.makedirs(os.path.join(root, directory), exist_ok=True)
  np.savez(os.path.join(root, directory, name), **arrays)


def test_video_streams_normalised_cut_and_tef(tmp_path):
  root = str(tmp_path)
  rng = np.random.default_rng(0)
  _write(root, "a", "v.npz", features=rng.normal(size=(10, 4)) * 5)
  _write(root, "b", "v.npz", features=rng.normal(size=(9, 3)))
  _write(root, "c", "v.npz", features=rng.normal(size=(10, 6)))
  video = features.load_video(_spec(root), "v", with_captions=True)
  assert video.num_clips_on_disk == 9  # cut to the shortest stream
  assert video.visual.shape == (8, 4 + 3 + 2) and video.caption.shape == (8, 6)  # max_clips=8
  np.testing.assert_allclose(np.linalg.norm(video.visual[:, :4], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(video.visual[:, 4:7], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      video.visual[:, 7:], np.stack([np.arange(8) / 8, np.arange(1, 9) / 8], 1)
  )


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: None, "missing feature file (vid v)"),
        (lambda r: _write(r, "a", "v.npz", feats=np.zeros((3, 4))), "no key 'features'"),
        (lambda r: _write(r, "a", "v.npz", features=np.zeros((3, 5))), "expected (N, 4)"),
        (
            lambda r: _write(r, "a", "v.npz", features=np.array([[0, 1, np.nan, 0]] * 3)),
            "NaN/inf values (first in row 0)",
        ),
        (lambda r: _write(r, "a", "v.npz", features=np.zeros((0, 4))), "is empty"),
        (lambda r: open(os.path.join(r, "a", "v.npz"), "w").write("not a zip"), "unreadable npz"),
    ],
)
def test_bad_feature_file_is_one_line_error_naming_file(tmp_path, setup, message):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "a"), exist_ok=True)
  setup(root)
  with pytest.raises(DataError) as e:
    features.load_video(_spec(root), "v", with_captions=False)
  assert str(e.value).startswith(os.path.join(root, "a", "v.npz")) and message in str(e.value)
  assert "\n" not in str(e.value)


def test_captions_mapped_onto_shorter_visual_clips():
  captions = np.arange(3, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # 3 x 2 s
  mapped = features.captions_per_clip(captions, 2.0, 0.5)  # 12 clips of 0.5 s
  np.testing.assert_array_equal(mapped[:, 0], np.repeat([0, 1, 2], 4))
  assert features.captions_per_clip(captions, 2.0, 2.0) is captions


def test_examples_map_two_second_captions_onto_half_second_clips(tmp_path):
  """Charades-STA: 2 s captions over 0.5 s visual clips; clip i gets the caption over its midpoint,
  and the video is cut to the captioned time."""
  root = str(tmp_path)
  rng = np.random.default_rng(3)
  _write(root, "a", "v.npz", features=rng.normal(size=(14, 4)))
  _write(root, "b", "v.npz", features=rng.normal(size=(14, 3)))
  captions = np.arange(1, 4, dtype=np.float32)[:, None] + np.zeros((1, 6), np.float32)  # 3 x 2 s
  _write(root, "c", "v.npz", features=captions)
  _write(root, "q", "qid1.npz", last_hidden_state=np.ones((3, 5)))
  _write(root, "cq", "qid1.npz", last_hidden_state=np.ones((3, 6)))
  ann = annotations_lib.parse_annotation(
      {"qid": 1, "query": "x", "duration": 7, "vid": "v", "relevant_windows": [[1, 3]]}, "t:1"
  )
  spec = _spec(root, clip_len=0.5, caption_clip_len=2.0, max_clips=16)
  ex = _source([ann], spec, with_captions=True, max_windows=2, training=True).example(0)
  assert ex["video_mask"].sum() == 12  # 14 visual clips, captions cover 12 of them
  np.testing.assert_array_equal(ex["caption_feats"][:12, 0], np.repeat([1, 2, 3], 4))
  assert not ex["caption_feats"][12:].any()
  assert ex["duration"] == 6.0
  np.testing.assert_array_equal(np.flatnonzero(ex["saliency"]), np.arange(2, 6))  # 1 s .. 3 s


def test_lazy_source_reads_features_on_first_use(tmp_path):
  """preload=False keeps no array at construction but checks every file's header there (clip counts
  known, a missing file fails before training), and gives the preloaded source's examples."""
  root = str(tmp_path)
  rng = np.random.default_rng(4)
  anns = []
  for q, vid in ((1, "v"), (2, "w")):
    for d, dim in (("a", 4), ("b", 3), ("c", 6)):
      _write(root, d, f"{vid}.npz", features=rng.normal(size=(6, dim)))
    _write(root, "q", f"qid{q}.npz", last_hidden_state=rng.normal(size=(3, 5)))
    _write(root, "cq", f"qid{q}.npz", last_hidden_state=rng.normal(size=(2, 6)))
    anns.append(
        annotations_lib.parse_annotation(
            {"qid": q, "query": "x", "duration": 12, "vid": vid, "relevant_windows": [[2, 6]]},
            f"t:{q}",
        )
    )
  kwargs = dict(with_captions=True, max_windows=2, training=False)
  eager = _source(anns, _spec(root), **kwargs)
  lazy = _source(anns, _spec(root), preload=False, **kwargs)
  assert lazy.store.clip_counts("v") == (6, 6)  # from the npz headers, no array kept
  for i in range(2):
    eager_example, lazy_example = eager.example(i), lazy.example(i)
    assert sorted(eager_example) == sorted(lazy_example)
    for key in eager_example:
      np.testing.assert_array_equal(lazy_example[key], eager_example[key])
  os.remove(os.path.join(root, "b", "w.npz"))
  with pytest.raises(DataError, match=r"b/w.npz: missing feature file"):
    _source(anns, _spec(root), preload=False, **kwargs)
  with pytest.raises(DataError, match=r"b/w.npz: missing feature file"):
    _source(anns, _spec(root), **kwargs)


def test_query_tokens_truncated_and_validated(tmp_path):
  root = str(tmp_path)
  _write(root, "q", "qid3.npz", last_hidden_state=np.ones((9, 5)))
  assert features.load_query_tokens(_spec(root), 3, caption_encoder=False).shape == (4, 5)
  _write(root, "cq", "qid3.npz", last_hidden_state=np.ones((9, 5)))
  with pytest.raises(DataError, match=r"qid3.npz: key 'last_hidden_state' has shape \(9, 5\)"):
    features.load_query_tokens(_spec(root), 3, caption_encoder=True)


@pytest.fixture(scope="module")
def tiny_sources(tiny_data_root):
  config = tiny_config(tiny_data_root)
  train = dataset.example_source(config.data, "train", with_captions=True, training=True)
  val = dataset.example_source(config.data, "val", with_captions=True, training=False)
  return config, train, val


def test_examples_are_padded_with_masks(tiny_sources):
  config, train, _ = tiny_sources
  for i in range(len(train)):
    ex = train.example(i)
    ann = train.annotations[i]
    n = int(ex["video_mask"].sum())
    assert ex["video_feats"].shape == (config.data.max_clips, 24 + 16 + 2)
    assert not ex["video_feats"][n:].any() and not ex["caption_feats"][n:].any()
    assert ex["duration"] == pytest.approx(min(ann.duration, n * config.data.clip_len))
    w = ex["windows"][ex["window_mask"]] * ex["duration"]
    np.testing.assert_allclose(w, np.asarray(ann.windows), atol=1e-4)
    assert not ex["windows"][~ex["window_mask"]].any()
    q = int(ex["query_mask"].sum())
    assert q >= 3 and not ex["query_feats"][q:].any()
    assert ex["saliency"][list(ann.relevant_clip_ids)].min() >= 3  # three annotators, each >= 1
    assert not ex["saliency"][n:].any()
    for key in ("saliency_pos", "saliency_neg"):
      assert ex[key].dtype == np.int32 and ex[key].shape == (2,)
      assert ((0 <= ex[key]) & (ex[key] < n)).all()
    # The hard pair is the best and the worst relevant clip of the summed-score labels.
    pos, neg = ex["saliency_pos"], ex["saliency_neg"]
    relevant = [c for c in ann.relevant_clip_ids if c < n]
    assert ex["saliency"][pos[0]] == ex["saliency"][relevant].max()
    assert ex["saliency"][neg[0]] == ex["saliency"][relevant].min()
    assert pos[1] in relevant and neg[1] not in ann.relevant_clip_ids
    # Evaluation (no rng) draws the same pairs every time.
    again = train.example(i)
    np.testing.assert_array_equal(again["saliency_pos"], pos)
    np.testing.assert_array_equal(again["saliency_neg"], neg)


def test_window_subset_and_truncation_policy(tmp_path):
  root = str(tmp_path)
  rng = np.random.default_rng(1)
  for d, dim in (("a", 4), ("b", 3), ("c", 6)):
    _write(root, d, "v.npz", features=rng.normal(size=(12, dim)))
  _write(root, "q", "qid1.npz", last_hidden_state=np.ones((3, 5)))
  _write(root, "cq", "qid1.npz", last_hidden_state=np.ones((3, 6)))
  windows = [[0, 2], [4, 6], [8, 10], [12, 14], [16, 18], [20, 22]]
  ann = annotations_lib.parse_annotation(
      {"qid": 1, "query": "x", "duration": 24, "vid": "v", "relevant_windows": windows}, "t:1"
  )
  source = _source(
      [ann], _spec(root, max_clips=10), with_captions=True, max_windows=3, training=True
  )
  ex = source.example(0, np.random.default_rng(0))
  assert ex["duration"] == 20.0  # 10 clips of 2 s kept of 12
  assert ex["window_mask"].all()  # 5 windows start before 20 s; a random 3 of them are kept
  kept = ex["windows"] * 20
  assert set(map(tuple, kept.tolist())) <= {tuple(map(float, w)) for w in windows[:5]}
  # Charades-style: no saliency scores -> clips overlapping the windows are salient.
  assert set(np.flatnonzero(ex["saliency"])) <= {0, 2, 4, 6, 8}
  # The pairs come from the first window, [0, 2) s = clip 0, whatever subset of windows was kept.
  assert ex["saliency_pos"].tolist() == [0, 0]
  neg = ex["saliency_neg"].tolist()
  assert neg[0] != neg[1] and set(neg) <= set(range(1, 10))


def _ann(**fields):
  record = {"qid": 1, "query": "x", "duration": 20, "vid": "v", "relevant_windows": [[2, 10]]}
  return annotations_lib.parse_annotation(dict(record, **fields), "t:1")


def _pairs(ann, num_clips, seed, clip_len=2.0):
  pos, neg = saliency_pairs(ann, num_clips, clip_len, np.random.default_rng(seed))
  assert pos.dtype == neg.dtype == np.int32 and pos.shape == neg.shape == (2,)
  return pos.tolist(), neg.tolist()


def test_saliency_pairs_with_scores_hard_and_easy():
  # Summed scores 5, 9, 9, 2, 2, 7: a stable argsort takes the last 9 (clip 3) and the first 2
  # (clip 4).
  clip_ids = [1, 2, 3, 4, 5, 6]
  scores = [[1, 2, 2], [3, 3, 3], [4, 4, 1], [0, 1, 1], [1, 1, 0], [2, 2, 3]]
  ann = _ann(relevant_clip_ids=clip_ids, saliency_scores=scores)
  easy_pos, easy_neg = set(), set()
  for seed in range(50):
    pos, neg = _pairs(ann, 10, seed)
    assert (pos[0], neg[0]) == (3, 4)
    assert pos[1] in clip_ids and neg[1] in {0, 7, 8, 9}
    easy_pos.add(pos[1])
    easy_neg.add(neg[1])
  assert easy_pos == set(clip_ids) and easy_neg == {0, 7, 8, 9}  # random, over the whole pools
  # Every kept clip relevant: no easy negative, the easy pair copies the hard one.
  every_clip = _ann(relevant_clip_ids=[0, 1], saliency_scores=[[4] * 3, [1] * 3])
  assert _pairs(every_clip, 2, 0) == ([0, 0], [1, 1])


def test_saliency_pairs_with_scores_in_a_truncated_video():
  # Clips 6 and 8 are cut off (6 kept): only the kept relevant clips 2 and 4 take part, although
  # clip 8 scores highest and clip 6 lowest.
  ann = _ann(relevant_clip_ids=[2, 4, 6, 8], saliency_scores=[[2] * 3, [1] * 3, [0] * 3, [4] * 3])
  for seed in range(20):
    pos, neg = _pairs(ann, 6, seed)
    assert (pos[0], neg[0]) == (2, 4) and pos[1] in {2, 4} and neg[1] in {0, 1, 3, 5}
  # No relevant clip kept: clamped to the last kept clip, as QD-DETR does.
  pos, neg = _pairs(ann, 2, 0)
  assert pos[0] == neg[0] == pos[1] == 1 and neg[1] in {0, 1}


def test_saliency_pairs_without_scores_inside_and_outside_the_window():
  # [2, 10) s with 2 s clips: clips 1..4 (end 10 s is clip 5's start, which is not in the window).
  ann = _ann()
  seen_pos, seen_neg = set(), set()
  for seed in range(50):
    pos, neg = _pairs(ann, 10, seed)
    assert pos[0] != pos[1] and set(pos) <= {1, 2, 3, 4}
    assert neg[0] != neg[1] and set(neg) <= {0, 5, 6, 7, 8, 9}
    seen_pos |= set(pos)
    seen_neg |= set(neg)
  assert seen_pos == {1, 2, 3, 4} and seen_neg == {0, 5, 6, 7, 8, 9}
  # A one-clip window repeats its clip; the first window that the kept clips reach is used.
  assert _pairs(_ann(relevant_windows=[[16, 19], [4, 6]]), 10, 0)[0] == [8, 8]
  assert _pairs(_ann(relevant_windows=[[16, 19], [4, 6]]), 5, 0)[0] == [2, 2]
  # One clip outside the window: drawn twice. None: the negatives repeat the positives.
  assert _pairs(_ann(relevant_windows=[[0, 18]]), 10, 0)[1] == [9, 9]
  pos, neg = _pairs(_ann(relevant_windows=[[0, 20]]), 10, 0)
  assert pos == neg and len(set(pos)) == 2
  # Charades-STA's 1/6 s clips: [1.0, 2.5] s -> clips 6..14.
  pos, neg = _pairs(_ann(relevant_windows=[[1.0, 2.5]]), 60, 0, clip_len=1 / 6)
  assert set(pos) <= set(range(6, 15)) and not set(neg) & set(range(6, 15))
  # Unlabelled (test split): zeros, the same shapes.
  unlabelled = annotations_lib.parse_annotation(
      {"qid": 1, "query": "x", "duration": 20, "vid": "v"}, "t:1"
  )
  assert _pairs(unlabelled, 10, 0) == ([0, 0], [0, 0])


SCORED = dict(
    relevant_clip_ids=[1, 2, 3, 4], saliency_scores=[[1, 2, 3], [4, 4, 4], [0, 0, 0], [2, 2, 2]]
)


@pytest.mark.parametrize("fields", [{}, SCORED], ids=["window", "scores"])
def test_saliency_pairs_reproducible_per_seed(fields):
  ann = _ann(**fields)
  draws = [_pairs(ann, 30, seed) for seed in range(20)]
  assert draws == [_pairs(ann, 30, seed) for seed in range(20)]
  assert len({str(d) for d in draws}) > 1  # the seed does change the easy/random clips


def test_training_query_without_window_in_kept_clips_is_dropped(tmp_path, caplog):
  root = str(tmp_path)
  for d, dim in (("a", 4), ("b", 3)):
    _write(root, d, "v.npz", features=np.ones((12, dim)))
  _write(root, "q", "qid1.npz", last_hidden_state=np.ones((3, 5)))
  _write(root, "q", "qid2.npz", last_hidden_state=np.ones((3, 5)))
  anns = [
      annotations_lib.parse_annotation(
          {"qid": q, "query": "x", "duration": 24, "vid": "v", "relevant_windows": [w]}, f"t:{q}"
      )
      for q, w in ((1, [18, 22]), (2, [2, 4]))
  ]
  source = _source(
      anns, _spec(root, max_clips=8), with_captions=False, max_windows=5, training=True
  )
  assert [a.qid for a in source.annotations] == [2]
  assert "1 training queries dropped" in caplog.text and "truncated" in caplog.text


def _all_batches(train, n, **kw):
  it = pipeline.train_batches(train, 4, seed=5, **kw)
  return [next(it) for _ in range(n)]


def test_train_order_deterministic_and_resumable(tiny_sources):
  _, train, _ = tiny_sources
  steps = order.steps_per_epoch(len(train), 4)
  run = _all_batches(train, 2 * steps + 1)
  again = _all_batches(train, 2 * steps + 1)
  for (p1, _, b1), (p2, _, b2) in zip(run, again):
    assert p1 == p2
    for k in b1:
      np.testing.assert_array_equal(b1[k], b2[k])
  # Epochs are different permutations.
  assert not np.array_equal(run[0].arrays["qid"], run[steps].arrays["qid"])
  # Resuming at any position yields exactly the remaining batches.
  # Each batch says where the stream stands after it: the position a checkpoint saves.
  for batch, following in zip(run, run[1:]):
    assert batch.next_position == following.position
  assert run[steps - 1].next_position == DataPosition(1, 0)
  start = run[steps + 1].position
  resumed = _all_batches(train, steps, start=start)
  for (p1, _, b1), (p2, _, b2) in zip(run[steps + 1 :], resumed):
    assert p1 == p2
    assert sorted(b1) == sorted(b2)
    for k in b1:  # the random window subsets and saliency pairs too
      np.testing.assert_array_equal(b1[k], b2[k])
  other_seed = next(pipeline.train_batches(train, 4, seed=6)).arrays
  assert not np.array_equal(other_seed["qid"], run[0].arrays["qid"])


def test_per_process_shards_assemble_the_single_process_batches(tiny_sources):
  """Process p reads the p-th slice of every global batch, with the same window subsets, so the
  processes' batches concatenated in process order are the batches of one process."""
  _, train, _ = tiny_sources
  steps = order.steps_per_epoch(len(train), 4)
  whole = _all_batches(train, 2 * steps)
  shards = []
  for p in range(2):
    it = pipeline.train_batches(train, 4, seed=5, process_index=p, process_count=2)
    shards.append([next(it) for _ in range(2 * steps)])
  for s, (position, _, batch) in enumerate(whole):
    assert shards[0][s][0] == shards[1][s][0] == position
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][s].arrays[key], shards[1][s].arrays[key]]), batch[key]
      )
  with pytest.raises(ValueError, match="not divisible"):
    next(pipeline.train_batches(train, 4, seed=5, process_index=0, process_count=3))


def test_pipelines_run_without_tf_data_autotuner(tiny_sources):
  """tf.data's autotuner runs a model thread that a finished iterator's destructor waits for, and it
  sleeps up to a minute between rounds: with it, a training stalled 3-60 s at each new epoch."""
  _, train, _ = tiny_sources
  ds = pipeline._dataset_from_indices(train, np.arange(4), None, 2)
  options = ds.options()
  assert options.autotune.enabled is False
  assert options.threading.private_threadpool_size >= 1


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_keeps_every_query_and_masks_padding(tiny_sources, process_count):
  _, _, val = tiny_sources
  per_process = [
      list(pipeline.eval_batches(val, 2 * process_count, p, process_count))
      for p in range(process_count)
  ]
  assert len({len(b) for b in per_process}) == 1  # same number of batches everywhere
  qids = [q for batches in per_process for b in batches for q in b["qid"][b["example_mask"]]]
  assert sorted(qids) == sorted(a.qid for a in val.annotations)
  last = per_process[0][-1]
  assert last["qid"].shape == (2,)


def test_synthetic_generator_is_seeded(tmp_path):
  small = synthetic.SyntheticConfig(
      **dict(vars(TINY_SYNTHETIC), train_videos=2, val_videos=1, test_videos=1)
  )
  a = synthetic.generate(small, str(tmp_path / "a"))
  b = synthetic.generate(small, str(tmp_path / "b"))
  for split in a:
    assert open(a[split]).read() == open(b[split]).read()
  x = np.load(tmp_path / "a/features/clip_features/syn_train_00000.npz")["features"]
  y = np.load(tmp_path / "b/features/clip_features/syn_train_00000.npz")["features"]
  np.testing.assert_array_equal(x, y)
  test_lines = [json.loads(l) for l in open(a["test"])]
  assert all("relevant_windows" not in r for r in test_lines)


def test_synthetic_data_is_fingerprinted_by_its_settings(tmp_path):
  config = tiny_config(str(tmp_path / "s"))
  config.data.generate_synthetic = True
  config.data.synthetic = dict(vars(TINY_SYNTHETIC), train_videos=2, val_videos=1, test_videos=1)
  settings = tmp_path / "s" / synthetic.SETTINGS_FILE
  synthetic.ensure(config.data)
  written = settings.stat().st_mtime_ns
  synthetic.ensure(config.data)  # the same settings: reused as it is
  assert settings.stat().st_mtime_ns == written
  config.data.synthetic.seed += 1
  with pytest.raises(
      DataError, match=r"synthetic_config.json: .*other settings: seed=.*\(config: "
  ):
    synthetic.ensure(config.data)
  settings.unlink()  # an interrupted write: made anew
  synthetic.ensure(config.data)
  assert json.loads(settings.read_text())["seed"] == config.data.synthetic.seed


def test_synthetic_target_and_distractor_look_alike_but_captions_differ(tiny_data_root):
  """The benchmark's premise: a distractor event exists with the target's actor and action, its
  clips' visual features match the target's, and only the captions tell the scenes apart."""
  anns = annotations_lib.load_annotations(
      os.path.join(tiny_data_root, "annotations", "train.jsonl")
  )
  checked = 0
  for ann in anns:
    words = ann.query
    scene = next(s for s in synthetic.SCENES if s in words)
    actor = max((a for a in synthetic.ACTORS if a in words), key=len)
    action = next(a for a in synthetic.ACTIONS if a in words)
    clip = np.load(os.path.join(tiny_data_root, "features/clip_features", f"{ann.vid}.npz"))
    feats = clip["features"].astype(np.float32)
    captions = np.load(os.path.join(tiny_data_root, "features/caption_features", f"{ann.vid}.npz"))[
        "captions"
    ]
    target = set(ann.relevant_clip_ids)
    target_mean = feats[sorted(target)].mean(0)
    # Distractor clips: same actor and action, not in a target window, another scene named.
    distractors = [
        c
        for c, text in enumerate(captions)
        if c not in target
        and f" {actor} " in f" {text} "
        and action in text
        and scene not in text
        and any(s in text for s in synthetic.SCENES)
    ]
    if not distractors:
      continue  # the distractor's captions may all have dropped the scene
    distractor_mean = feats[distractors].mean(0)
    background_mean = feats[
        [c for c, t in enumerate(captions) if t in synthetic.BACKGROUND_CAPTIONS]
    ].mean(0)
    cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    assert cos(target_mean, distractor_mean) > cos(target_mean, background_mean) + 0.2
    assert all(scene not in captions[c] for c in distractors)
    checked += 1
  assert checked >= len(anns) // 3


def _scene_probe_accuracy(root: str) -> float:
  """A least-squares linear probe of each event clip's scene from its visual features (both streams
  L2-normalised per clip, as the loaders do): trained on the train split, scored on the val split.
  """

  def clips_and_scenes(split):
    xs, ys = [], []
    for line in open(os.path.join(root, "annotations", f"{split}.jsonl")):
      record = json.loads(line)
      scene = next(i for i, s in enumerate(synthetic.SCENES) if s in record["query"])
      streams = []
      for stream in ("slowfast_features", "clip_features"):
        f = np.load(os.path.join(root, "features", stream, f"{record['vid']}.npz"))["features"]
        f = f.astype(np.float32)
        streams.append(f / np.linalg.norm(f, axis=1, keepdims=True))
      feats = np.concatenate(streams, axis=1)
      xs.append(feats[record["relevant_clip_ids"]])
      ys += [scene] * len(record["relevant_clip_ids"])
    return np.concatenate(xs), np.array(ys)

  x, y = clips_and_scenes("train")
  targets = np.eye(len(synthetic.SCENES))[y]
  weights = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ targets)
  x_val, y_val = clips_and_scenes("val")
  return float(((x_val @ weights).argmax(1) == y_val).mean())


@pytest.mark.parametrize("visual_scene", [0.0, 0.3])
def test_synthetic_visual_scene_sets_how_much_scene_the_visual_features_carry(
    tmp_path, visual_scene
):
  """``visual_scene`` = 0 (the default): a linear probe of the scene from the visual features is at
  chance (1/12); at 0.3 the scene is there to be read."""
  settings = synthetic.SyntheticConfig(
      seed=1,
      train_videos=160,
      val_videos=60,
      test_videos=1,
      min_clips=20,
      max_clips=24,
      min_event_clips=2,
      max_event_clips=3,
      slowfast_dim=48,
      clip_dim=32,
      text_dim=32,
      caption_dim=8,
      visual_scene=visual_scene,
  )
  synthetic.generate(settings, str(tmp_path))
  accuracy = _scene_probe_accuracy(str(tmp_path))
  if visual_scene == 0.0:
    assert accuracy < 0.2, accuracy
  else:
    assert accuracy > 0.5, accuracy


def test_synthetic_data_without_visual_scene_setting_is_the_hard_variant(tmp_path):
  """Data written before ``visual_scene`` existed (a settings file without it) is the hard variant's:
  reused for visual_scene=0, refused for any other value."""
  config = tiny_config(str(tmp_path / "s"))
  config.data.generate_synthetic = True
  config.data.synthetic = dict(vars(TINY_SYNTHETIC), train_videos=2, val_videos=1, test_videos=1)
  synthetic.ensure(config.data)
  settings = tmp_path / "s" / synthetic.SETTINGS_FILE
  stored = json.loads(settings.read_text())
  assert stored.pop("visual_scene") == 0.0
  settings.write_text(json.dumps(stored))
  written = settings.stat().st_mtime_ns
  synthetic.ensure(config.data)
  assert settings.stat().st_mtime_ns == written
  config.data.synthetic.visual_scene = 0.3
  with pytest.raises(DataError, match=r"other settings: visual_scene=0.0 \(config: 0.3\)"):
    synthetic.ensure(config.data)
