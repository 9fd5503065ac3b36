import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmr_jax.losses.span_ops import (
    cxw_to_se,
    pairwise_generalized_iou,
    pairwise_temporal_iou,
    se_to_cxw,
)

# (span_a, span_b, iou, giou), all start/end, computed by hand.
HAND_CASES = {
    "overlap": ([0.1, 0.5], [0.3, 0.7], 0.2 / 0.6, 0.2 / 0.6),
    "disjoint": ([0.0, 0.2], [0.5, 0.6], 0.0, -0.3 / 0.6),
    "touching": ([0.0, 0.5], [0.5, 1.0], 0.0, 0.0),
    "nested": ([0.2, 0.8], [0.4, 0.5], 0.1 / 0.6, 0.1 / 0.6),
    "identical": ([0.2, 0.6], [0.2, 0.6], 1.0, 1.0),
    "zero_len_identical": ([0.3, 0.3], [0.3, 0.3], 0.0, 0.0),
    "zero_len_inside": ([0.3, 0.3], [0.1, 0.5], 0.0, 0.0),
    "zero_len_disjoint": ([0.1, 0.1], [0.5, 0.5], 0.0, -1.0),
}


def _numpy_iou_giou(a, b):
  """Straightforward scalar-loop reference."""
  iou = np.zeros((len(a), len(b)))
  giou = np.zeros((len(a), len(b)))
  for i, (s1, e1) in enumerate(a):
    for j, (s2, e2) in enumerate(b):
      inter = max(0.0, min(e1, e2) - max(s1, s2))
      union = (e1 - s1) + (e2 - s2) - inter
      enclosing = max(e1, e2) - min(s1, s2)
      iou[i, j] = inter / union if union > 0 else 0.0
      giou[i, j] = iou[i, j] - ((enclosing - union) / enclosing if enclosing > 0 else 0.0)
  return iou, giou


def _random_spans(rng, n):
  return np.sort(rng.uniform(0, 1, size=(n, 2)), axis=-1).astype(np.float32)


def test_cxw_se_hand_values_and_roundtrip():
  cxw = jnp.array([[0.5, 0.2], [0.1, 0.0], [0.3, 0.6]])
  se = cxw_to_se(cxw)
  np.testing.assert_allclose(se, [[0.4, 0.6], [0.1, 0.1], [0.0, 0.6]], atol=1e-7)
  np.testing.assert_allclose(se_to_cxw(se), cxw, atol=1e-7)
  batched = jnp.tile(cxw[None], (3, 1, 1))
  np.testing.assert_allclose(se_to_cxw(cxw_to_se(batched)), batched, atol=1e-7)


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_computed(name):
  a, b, iou, giou = HAND_CASES[name]
  a, b = jnp.array([a]), jnp.array([b])
  got_iou, _ = pairwise_temporal_iou(a, b)
  np.testing.assert_allclose(got_iou[0, 0], iou, atol=1e-6)
  np.testing.assert_allclose(pairwise_generalized_iou(a, b)[0, 0], giou, atol=1e-6)
  # Symmetric in its arguments.
  np.testing.assert_allclose(pairwise_generalized_iou(b, a)[0, 0], giou, atol=1e-6)


def test_matches_numpy_loop_including_degenerate_spans():
  rng = np.random.default_rng(0)
  a, b = _random_spans(rng, 7), _random_spans(rng, 5)
  a[0] = a[0, :1]  # zero-length spans
  b[1] = b[1, :1]
  b[2] = a[3]  # an identical pair
  iou, union = jax.jit(pairwise_temporal_iou)(a, b)
  giou = jax.jit(pairwise_generalized_iou)(a, b)
  ref_iou, ref_giou = _numpy_iou_giou(a.astype(np.float64), b.astype(np.float64))
  assert iou.shape == union.shape == giou.shape == (7, 5)
  np.testing.assert_allclose(iou, ref_iou, atol=1e-5)
  np.testing.assert_allclose(giou, ref_giou, atol=1e-5)
  assert np.all(np.asarray(giou) <= np.asarray(iou) + 1e-6)
  assert np.all((np.asarray(giou) >= -1 - 1e-6) & (np.asarray(giou) <= 1 + 1e-6))


def test_vmap_over_batch_matches_per_example():
  rng = np.random.default_rng(1)
  a = np.stack([_random_spans(rng, 4) for _ in range(3)])
  b = np.stack([_random_spans(rng, 2) for _ in range(3)])
  batched = jax.jit(jax.vmap(pairwise_generalized_iou))(a, b)
  assert batched.shape == (3, 4, 2)
  for k in range(3):
    np.testing.assert_allclose(batched[k], pairwise_generalized_iou(a[k], b[k]), atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: pairwise_temporal_iou(a, b)[0],
        pairwise_generalized_iou,
    ],
)
def test_gradients_finite_for_degenerate_spans(fn):
  a = jnp.array([[0.3, 0.3], [0.1, 0.1], [0.2, 0.6], [0.0, 0.5]])
  b = jnp.array([[0.3, 0.3], [0.5, 0.5], [0.2, 0.6], [0.5, 1.0]])
  grads = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(a, b)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  # Also through the cxw parametrisation used by the model head.
  g_cxw = jax.grad(lambda c: fn(cxw_to_se(c), b).sum())(se_to_cxw(a))
  assert np.all(np.isfinite(np.asarray(g_cxw)))
