"""Model outputs -> submission records: windows in seconds, best first, and QD-DETR's rounding of
window ends to multiples of the clip length (config.eval_round_to_clip); and the records of
eval_protocol="qd_detr" against what QD-DETR's own evaluation code wrote for the same outputs."""

import json
import os

import ml_collections
import numpy as np

from conftest import FIXTURES
from configs import base, charades, qvh, tiny
from lmr_jax.data.annotations import QueryAnnotation
from lmr_jax.evaluation import predictions


def _annotation(qid, duration):
  return QueryAnnotation(qid, f"query {qid}", f"vid{qid}", duration, (), (), (), "test:1")


# Row 0: a 150 s QVHighlights video, three moments as (center, width) fractions of the video:
#   (0.5, 0.1)   -> [67.5, 82.5] s  -> [68, 82]   (33.75 and 41.25 clips round to 34 and 41)
#   (0.02, 0.02) -> [1.5, 4.5] s    -> [2, 4]     (0.75 -> 1, 2.25 -> 2)
#   (0.99, 0.04) -> [145.5, 150] s  -> [146, 150] (the end is clipped to the video first)
# Row 1: padding, which gives no record.
OUTPUTS = {
    "spans": np.array(
        [[[0.5, 0.1], [0.02, 0.02], [0.99, 0.04]], [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]],
        np.float32,
    ),
    "scores": np.array([[0.2, 0.9, 0.5], [0.1, 0.1, 0.1]], np.float32),
    "saliency": np.array([[0.5, -0.25, 1.0], [0.0, 0.0, 0.0]], np.float32),
}
BATCH = {
    "example_mask": np.array([True, False]),
    "qid": np.array([7, 0]),
    "duration": np.array([150.0, 1.0], np.float32),
    "video_mask": np.array([[1, 1, 1], [1, 0, 0]]),
}
ANNOTATIONS = {7: _annotation(7, 150.0)}


def test_records_keep_the_models_windows_without_rounding():
  (record,) = predictions.to_submission_records(OUTPUTS, BATCH, ANNOTATIONS, None)
  assert record == {
      "qid": 7,
      "query": "query 7",
      "vid": "vid7",
      "pred_relevant_windows": [[1.5, 4.5, 0.9], [145.5, 150.0, 0.5], [67.5, 82.5, 0.2]],
      "pred_saliency_scores": [0.5, -0.25, 1.0],
  }


def test_records_round_window_ends_to_clips():
  (record,) = predictions.to_submission_records(OUTPUTS, BATCH, ANNOTATIONS, 2.0)
  windows = record["pred_relevant_windows"]
  assert windows == [[2.0, 4.0, 0.9], [146.0, 150.0, 0.5], [68.0, 82.0, 0.2]]
  assert record["pred_saliency_scores"] == [0.5, -0.25, 1.0]  # saliency is not post-processed


def test_round_to_clips_by_hand():
  windows = np.array(
      [
          [3.0, 5.0],  # ties go to the even multiple (torch.round): 1.5 -> 2, 2.5 -> 2
          [2.99996, 7.00004],  # 3.0 and 7.0 at 4 decimals (QD-DETR's written values): 4 and 8
          [0.9, 2.99994],  # 2.9999 at 4 decimals: 1.49995 clips, down to 2 s
      ]
  )
  np.testing.assert_array_equal(predictions.round_to_clips(windows, 2.0), [[4, 4], [4, 8], [0, 2]])
  # Charades-STA VGG, 1/6 s clips: 30.96 s is 185.76 clips -> 186 clips = 31 s, past the duration.
  np.testing.assert_allclose(
      predictions.round_to_clips(np.array([[0.2, 30.96]]), 1 / 6), [[1 / 6, 31.0]], rtol=1e-12
  )


def test_round_to_clips_matches_qd_detrs_post_processing():
  """QD-DETR: windows written with 4 decimals, then, in float32 torch, clamp to [0, 150] and
  torch.round(w / 2) * 2 (its PostProcessorDETR's clip_ts and round_multiple)."""
  import torch

  rng = np.random.default_rng(0)
  windows = np.sort(rng.uniform(0, 150, (2000, 2)), axis=1)
  odd = np.arange(1, 150, 2, dtype=float)  # the ties, and values within 4 decimals of them
  windows = np.concatenate(
      [windows, np.stack([odd, odd + 4e-5], 1), np.stack([odd - 4e-5, odd + 6e-5], 1)]
  )
  written = torch.tensor([[float(f"{x:.4f}") for x in w] for w in windows])
  qd_detr = torch.round(torch.clamp(written, min=0, max=150) / 2) * 2
  np.testing.assert_array_equal(predictions.round_to_clips(windows, 2.0), qd_detr.numpy())


def test_clip_rounding_follows_the_config():
  assert predictions.clip_rounding(qvh.get_config()) == 2.0
  assert predictions.clip_rounding(qvh.get_config("clip_only")) == 2.0
  assert predictions.clip_rounding(charades.get_config()) == 1 / 6
  assert predictions.clip_rounding(charades.get_config("sf_clip")) == 1.0
  assert predictions.clip_rounding(base.get_base_config()) is None
  assert predictions.clip_rounding(tiny.get_config()) is None
  # the config.json of a workdir trained before the switch existed
  old = ml_collections.ConfigDict({"data": {"clip_len": 2.0}})
  assert predictions.clip_rounding(old) is None


def _qd_detr_fixture():
  """Outputs and QD-DETR's records for them (tests/fixtures/qd_detr_eval/ATTRIBUTION.md)."""
  with open(os.path.join(FIXTURES, "qd_detr_eval", "postprocessing.json")) as f:
    fixture = json.load(f)
  meta = fixture["meta"]
  num_rows = len(meta)
  lengths = np.asarray(fixture["video_lengths"])
  saliency = np.asarray(fixture["saliency"], np.float32)
  outputs = {
      "spans": np.asarray(fixture["spans"], np.float32),
      "scores": np.asarray(fixture["scores"], np.float32),
      "saliency": saliency,
  }
  batch = {  # one padding row more than QD-DETR's batch, as our last eval batch has
      "example_mask": np.arange(num_rows + 1) < num_rows,
      "qid": np.array([m["qid"] for m in meta] + [0]),
      "duration": np.array([m["duration"] for m in meta] + [1], np.float32),
      "video_mask": np.arange(saliency.shape[1])[None] < np.append(lengths, 1)[:, None],
  }
  for key in ("spans", "scores", "saliency"):
    outputs[key] = np.concatenate([outputs[key], outputs[key][:1]])
  annotations = {
      m["qid"]: QueryAnnotation(m["qid"], m["query"], m["vid"], m["duration"], (), (), (), "t:1")
      for m in meta
  }
  return outputs, batch, annotations, fixture["records"]


def test_qd_detr_records_are_what_qd_detrs_evaluation_wrote():
  """Windows past the duration or 150 s, ends its 4 decimals move onto a rounding tie, tied scores, a
  non-integer duration, float16 saliency: the records equal QD-DETR's to the last bit."""
  outputs, batch, annotations, expected = _qd_detr_fixture()
  ours = predictions.qd_detr_records(outputs, batch, annotations)
  assert ours == expected


def test_our_records_differ_from_qd_detrs_where_the_fixture_says():
  """The fixture tells the two protocols apart: ours cuts windows at the duration, keeps float32
  saliency and rounds unrounded seconds, so its records are not QD-DETR's."""
  outputs, batch, annotations, expected = _qd_detr_fixture()
  ours = predictions.to_submission_records(outputs, batch, annotations, 2.0)
  by_qid = {r["qid"]: r for r in ours}
  row1 = by_qid[expected[1]["qid"]]["pred_relevant_windows"]
  assert max(w[1] for w in row1) <= 126 < max(w[1] for w in expected[1]["pred_relevant_windows"])
  assert all(r["pred_saliency_scores"] != e["pred_saliency_scores"] for r, e in zip(ours, expected))


def test_records_follow_the_eval_protocol():
  config = qvh.get_config("qd_detr")
  outputs, batch, annotations, expected = _qd_detr_fixture()
  assert predictions.records_for(config)(outputs, batch, annotations) != expected
  with config.unlocked():
    config.eval_protocol = "qd_detr"
  assert predictions.records_for(config)(outputs, batch, annotations) == expected
