"""Each loss term against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from lmr_jax.losses import losses


@pytest.fixture
def cfg() -> ml_collections.ConfigDict:
  return base.get_base_config().loss


def _moment_losses(*arrays_and_cfg):
  """losses.moment_losses, jitted as training runs it: one compilation instead of one per op (the
  matcher's loops make eager calls slow)."""
  *arrays, cfg = arrays_and_cfg
  step = lambda spans, logits, windows, window_mask, example_mask: losses.moment_losses(  # noqa: E731
      spans, logits, windows, window_mask, example_mask_B=example_mask, cfg=cfg
  )
  return jax.jit(step)(*arrays)


def _total_loss(outputs, batch, cfg):
  """losses.total_loss, jitted anew per call: ``cfg`` is read when it is traced."""
  return jax.jit(lambda o, b: losses.total_loss(o, b, cfg))(outputs, batch)


def _moment(cfg, target_se):
  pred_cxw = jnp.array([[[0.5, 0.2], [0.3, 0.2]]])  # p0 = [0.4, 0.6], p1 = [0.2, 0.4]
  logits = jnp.array([[[0.0, 1.0], [2.0, 0.0]]])
  windows = jnp.array([[target_se, [0.0, 0.0]]])
  return _moment_losses(
      pred_cxw, logits, windows, jnp.array([[True, False]]), jnp.array([True]), cfg
  )


def test_moment_losses_exact_match(cfg):
  terms = _moment(cfg, [0.2, 0.4])  # p1 exactly
  assert float(terms["span_l1"]) == pytest.approx(0.0, abs=1e-6)
  assert float(terms["span_giou"]) == pytest.approx(0.0, abs=1e-6)
  # p1 is foreground: -log softmax([2, 0])[0]; p0 background (weight 0.1): -log softmax([0, 1])[1];
  # QD-DETR averages the weighted terms over the B x K = 2 queries, not over the weights' sum.
  expected = (math.log(1 + math.exp(-2)) + 0.1 * math.log(1 + math.exp(-1))) / 2
  assert float(terms["label"]) == pytest.approx(expected, rel=1e-5)


def test_moment_losses_offset_target(cfg):
  terms = _moment(cfg, [0.1, 0.3])  # p1 is cheaper (L1 0.1 vs 0.3 in cxw); IoU 1/3, hull 0.3
  assert float(terms["span_l1"]) == pytest.approx(0.05, rel=1e-5)  # mean |(0.3,0.2)-(0.2,0.2)|
  assert float(terms["span_giou"]) == pytest.approx(1 - 1 / 3, rel=1e-5)


def test_padded_examples_contribute_nothing(cfg):
  pred = jnp.array([[[0.5, 0.2]], [[0.9, 0.1]]])
  logits = jnp.zeros((2, 1, 2))
  windows = jnp.array([[[0.4, 0.6]], [[0.0, 0.5]]])
  terms = _moment_losses(
      pred, logits, windows, jnp.array([[True], [True]]), jnp.array([True, False]), cfg
  )
  assert float(terms["span_l1"]) == pytest.approx(0.0, abs=1e-6)


def test_saliency_hinge_on_sampled_pairs():
  scores = jnp.array([[0.1, 0.0, 0.5, 9.0], [1.0, 2.0, 3.0, 4.0]])
  pos = jnp.array([[0, 2], [3, 3]])
  neg = jnp.array([[1, 0], [0, 0]])
  # Row 0: relu(0.2 + 0.0 - 0.1) = 0.1, relu(0.2 + 0.1 - 0.5) = 0; row 1 is padding (example mask).
  value = losses.saliency_hinge_loss(scores, pos, neg, jnp.array([True, False]), margin=0.2)
  assert float(value) == pytest.approx(2 * 0.1 / 2, rel=1e-5)  # QD-DETR: mean over pairs, x 2


def test_matching_with_fewer_queries_than_windows(cfg):
  """k = 1 against two windows: the one query takes the window it fits best (the paper's k sweep)."""
  pred = jnp.array([[[0.3, 0.2]]])  # [0.2, 0.4]
  logits = jnp.array([[[2.0, 0.0]]])
  windows = jnp.array([[[0.6, 0.9], [0.2, 0.4]]])
  terms = _moment_losses(pred, logits, windows, jnp.array([[True, True]]), jnp.array([True]), cfg)
  assert float(terms["span_l1"]) == pytest.approx(0.0, abs=1e-6)
  assert float(terms["label"]) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)


def test_rank_contrastive_two_clips():
  scores = jnp.zeros((1, 2))
  labels = jnp.array([[12.0, 0.0]])
  mask = jnp.ones((1, 2), bool)
  # Levels 1..11 each: one positive among two equal scores -> -log(1/2); QD-DETR divides by 12.
  value = losses.rank_contrastive_loss(
      scores, None, labels, mask, example_mask_B=jnp.array([True]), temperature=1.0
  )
  assert float(value) == pytest.approx(11 * math.log(2) / 12, rel=1e-5)
  # With a negative video of equal scores, each level has 1 positive among 4 clips.
  value = losses.rank_contrastive_loss(
      scores, scores, labels, mask, example_mask_B=jnp.array([True]), temperature=1.0
  )
  assert float(value) == pytest.approx(11 * math.log(4) / 12, rel=1e-5)


def test_inter_video_loss():
  scores_neg = jnp.array([[0.0, math.log(3), 50.0]])
  mask = jnp.array([[True, True, False]])
  # -log(1 - sigmoid(0)) = log 2; sigmoid(log 3) = 3/4 -> -log(1/4) = log 4.
  value = losses.inter_video_loss(scores_neg, mask, jnp.array([True]))
  assert float(value) == pytest.approx(math.log(8), rel=1e-5)


@pytest.mark.slow
def test_total_loss_weights_every_term(cfg):
  rng = np.random.default_rng(0)
  outputs = {
      "pred_spans": jnp.asarray(rng.uniform(0.2, 0.8, (2, 3, 4, 2)), jnp.float32),
      "pred_logits": jnp.asarray(rng.normal(size=(2, 3, 4, 2)), jnp.float32),
      "saliency": jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),
      "saliency_neg": jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),
  }
  batch = {
      "windows": jnp.array([[[0.1, 0.3], [0.5, 0.9]]] * 3),
      "window_mask": jnp.array([[True, False], [True, True], [True, False]]),
      "example_mask": jnp.ones(3, bool),
      "video_mask": jnp.ones((3, 6), bool),
      "saliency": jnp.asarray(rng.integers(0, 12, (3, 6)), jnp.float32),
      "saliency_pos": jnp.asarray(rng.integers(0, 6, (3, 2)), jnp.int32),
      "saliency_neg": jnp.asarray(rng.integers(0, 6, (3, 2)), jnp.int32),
  }
  loss, terms = _total_loss(outputs, batch, cfg)
  weights = {
      "span_l1": 10,
      "span_giou": 1,
      "label": 4,
      "saliency_hinge": 1,
      "saliency_rank_contrastive": 1,
      "saliency_inter_video": 1,
  }
  expected = sum(weights[name.split("/")[-1]] * float(v) for name, v in terms.items())
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert "aux0/span_l1" in terms
  cfg.aux_layers = False
  _, terms = _total_loss(outputs, batch, cfg)
  assert "aux0/span_l1" not in terms
