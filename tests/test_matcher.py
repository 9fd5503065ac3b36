"""Checks the on-device Hungarian matcher against scipy.

Each jitted function is built once at module level so every shape compiles
once and is reused across tests (this keeps the file fast on CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from lmr_jax.losses.matcher import batched_match, hungarian_assignment, match_rectangular

BATCH = 48
N_PRED, M_SLOTS = 10, 5

batched_square = jax.jit(jax.vmap(hungarian_assignment))
batched_rect = jax.jit(batched_match)


def _square_costs(kind, n, rng):
  shape = (BATCH, n, n)
  if kind == "distinct":
    return rng.normal(size=shape).astype(np.float32)
  if kind == "ties":
    return rng.integers(0, 4, size=shape).astype(np.float32)
  if kind == "large_negative":
    return rng.uniform(-5e4, 5e4, size=shape).astype(np.float32)
  raise ValueError(kind)


def _assert_permutations(col_ind, n):
  assert col_ind.dtype == np.int32
  np.testing.assert_array_equal(
      np.sort(col_ind, axis=-1), np.broadcast_to(np.arange(n), col_ind.shape)
  )


@pytest.mark.parametrize("kind", ["distinct", "ties", "large_negative"])
@pytest.mark.parametrize("n", range(1, 13))
def test_square_matches_scipy(n, kind):
  rng = np.random.default_rng(1000 * n + len(kind))
  costs = _square_costs(kind, n, rng)
  row_ind, col_ind = (np.asarray(x) for x in batched_square(costs))
  np.testing.assert_array_equal(row_ind, np.broadcast_to(np.arange(n), (BATCH, n)))
  _assert_permutations(col_ind, n)
  for cost, cols in zip(costs, col_ind):
    ref_rows, ref_cols = linear_sum_assignment(cost)
    ref_total = cost[ref_rows, ref_cols].astype(np.float64).sum()
    total = cost[np.arange(n), cols].astype(np.float64).sum()
    np.testing.assert_allclose(total, ref_total, rtol=1e-6, atol=1e-4)
    if kind != "ties":  # continuous costs: the optimum is unique
      np.testing.assert_array_equal(cols, ref_cols)


def _rect_inputs(rng, n_pred=N_PRED, m_slots=M_SLOTS):
  costs = rng.normal(size=(BATCH, n_pred, m_slots)).astype(np.float32)
  n_real = rng.integers(0, m_slots + 1, size=BATCH)
  masks = np.arange(m_slots)[None, :] < n_real[:, None]
  # Scatter the real slots too, not only a prefix.
  masks = np.stack([rng.permutation(m) for m in masks])
  return costs, masks


# More predictions than slots (k = 10, 5 windows) and fewer (k = 1 or 3: the paper's Tab. VII sweep).
@pytest.mark.parametrize("n_pred", [N_PRED, M_SLOTS, 3, 1])
def test_rectangular_with_masks_matches_scipy(n_pred):
  rng = np.random.default_rng(7 + n_pred)
  costs, masks = _rect_inputs(rng, n_pred)
  pred_idx, valid = (np.asarray(x) for x in batched_rect(costs, masks))
  assert pred_idx.shape == valid.shape == (BATCH, M_SLOTS)
  assert (pred_idx >= 0).all() and (pred_idx < n_pred).all()
  for cost, mask, preds, ok in zip(costs, masks, pred_idx, valid):
    assert not (ok & ~mask).any()  # only real slots are matched
    assert ok.sum() == min(n_pred, mask.sum())  # as many pairs as scipy makes
    assert len(set(preds[ok].tolist())) == ok.sum()  # distinct predictions
    real = cost[:, mask]
    ref_rows, ref_cols = linear_sum_assignment(real)
    got = cost[preds[ok], np.flatnonzero(ok)]
    np.testing.assert_allclose(got.sum(), real[ref_rows, ref_cols].sum(), atol=1e-5)
    # Continuous costs: the optimal pairs are unique.
    real_slots = np.flatnonzero(mask)
    assert set(zip(preds[ok].tolist(), np.flatnonzero(ok).tolist())) == set(
        zip(ref_rows.tolist(), real_slots[ref_cols].tolist())
    )


def test_batched_match_compiles_once():
  traces = []

  @jax.jit
  def match(costs, masks):
    traces.append(None)
    return batched_match(costs, masks)

  rng = np.random.default_rng(3)
  for _ in range(3):
    costs, masks = _rect_inputs(rng)
    pred_idx, _ = match(costs, masks)
    pred_idx.block_until_ready()
  assert len(traces) == 1


def test_matching_blocks_gradient_but_gather_does_not():
  rng = np.random.default_rng(4)
  cost = jnp.asarray(rng.normal(size=(N_PRED, M_SLOTS)).astype(np.float32))
  mask = jnp.array([True, True, False, True, False])

  def matched_cost(c):
    pred_idx, valid = match_rectangular(c, mask)
    return jnp.sum(jnp.where(valid, c[pred_idx, jnp.arange(M_SLOTS)], 0.0))

  grad = np.asarray(jax.jit(jax.grad(matched_cost))(cost))
  pred_idx, _ = jax.jit(match_rectangular)(cost, mask)
  expected = np.zeros((N_PRED, M_SLOTS), np.float32)
  for slot in np.flatnonzero(np.asarray(mask)):
    expected[int(pred_idx[slot]), slot] = 1.0
  np.testing.assert_array_equal(grad, expected)


def test_non_finite_costs_terminate():
  cost = jnp.full((4, 4), jnp.nan).at[0, 0].set(1.0)
  _, col_ind = jax.jit(hungarian_assignment)(cost)
  assert col_ind.shape == (4,)
