"""Exact Hungarian matching in pure JAX (jittable, vmappable).

Set-prediction losses need a one-to-one matching between moment queries and
ground-truth windows. Calling scipy from inside a jitted train step would need
a host callback per step, so the matching is done on device with the
O(n^3) shortest-augmenting-path Hungarian algorithm with potentials
(e-maxx / Jonker-Volgenant formulation). Unlike an approximate auction or
Sinkhorn matcher, it returns an optimal assignment.

Costs must be finite. Non-finite entries give an unspecified assignment, but
every loop is bounded so the computation still terminates.
"""

import jax
import jax.numpy as jnp
from jax import lax


def _find_augmenting_path(cost, row, u, v, p, way):
  """Dijkstra-like search from ``row`` to a free column (1-indexed arrays).

  Index 0 of ``u, v, p, way`` is the algorithm's virtual column/row: p[0]
  holds the row being inserted. Returns the updated potentials, ``way``
  (predecessor column of each column on the shortest-path tree) and the free
  column the path ends at.
  """
  n1 = v.shape[0]
  inf = jnp.array(jnp.inf, cost.dtype)
  p = p.at[0].set(row)

  def cond(state):
    _, _, p, _, _, _, j0, steps = state
    # ``steps`` never binds for finite costs (each step consumes a column).
    return (p[j0] != 0) & (steps < n1)

  def body(state):
    u, v, p, way, minv, used, j0, steps = state
    used = used.at[j0].set(True)
    i0 = p[j0]
    reduced = cost[i0] - u[i0] - v
    improves = ~used & (reduced < minv)
    minv = jnp.where(improves, reduced, minv)
    way = jnp.where(improves, j0, way)
    j1 = jnp.argmin(jnp.where(used, inf, minv))
    delta = minv[j1]
    # Used columns' rows are distinct, so the scatter-add is a plain update;
    # unused columns contribute 0 whatever their (possibly repeated) p.
    u = u.at[p].add(jnp.where(used, delta, 0.0))
    v = jnp.where(used, v - delta, v)
    minv = jnp.where(used, minv, minv - delta)
    return u, v, p, way, minv, used, j1, steps + 1

  minv = jnp.full((n1,), inf)
  used = jnp.zeros((n1,), bool)
  state = (u, v, p, way, minv, used, jnp.int32(0), jnp.int32(0))
  u, v, p, way, _, _, j0, _ = lax.while_loop(cond, body, state)
  return u, v, p, way, j0


def _augment(p, way, j0):
  """Flip the matching along the path ending at free column ``j0``."""
  n1 = p.shape[0]

  def cond(state):
    _, j0, steps = state
    return (j0 != 0) & (steps < n1)

  def body(state):
    p, j0, steps = state
    j1 = way[j0]
    return p.at[j0].set(p[j1]), j1, steps + 1

  p, _, _ = lax.while_loop(cond, body, (p, j0, jnp.int32(0)))
  return p


def hungarian_assignment(cost_NxN):
  """Exact minimum-cost perfect assignment of a square cost matrix.

  Returns ``(row_ind_N, col_ind_N)`` (int32) like
  ``scipy.optimize.linear_sum_assignment``: row ``row_ind[k]`` is assigned to
  column ``col_ind[k]``, with ``row_ind = arange(N)``. Ties are broken
  deterministically (lowest column index first), which may differ from
  scipy's choice among equally cheap assignments.
  """
  n = cost_NxN.shape[0]
  assert cost_NxN.shape == (n, n), f"square cost expected, got {cost_NxN.shape}"
  dtype = jnp.promote_types(cost_NxN.dtype, jnp.float32)
  # Row/column 0 are the algorithm's virtual entries; shifting by one keeps
  # the 1-indexed formulation (p[j] == 0 means "column j is free").
  cost = jnp.pad(cost_NxN.astype(dtype), ((1, 0), (1, 0)))

  def insert_row(row, carry):
    u, v, p, way = carry
    u, v, p, way, j0 = _find_augmenting_path(cost, row, u, v, p, way)
    return u, v, _augment(p, way, j0), way

  zeros_f = jnp.zeros((n + 1,), dtype)
  zeros_i = jnp.zeros((n + 1,), jnp.int32)
  _, _, p, _ = lax.fori_loop(1, n + 1, insert_row, (zeros_f, zeros_f, zeros_i, zeros_i))
  row_of_col = p[1:] - 1
  row_ind = jnp.arange(n, dtype=jnp.int32)
  col_ind = jnp.zeros((n,), jnp.int32).at[row_of_col].set(row_ind)
  return row_ind, col_ind


def match_rectangular(cost_NxM, target_mask_M):
  """Match N predictions to the real ones of M padded target slots: min(N, #real) pairs of least
  total cost, as scipy's linear_sum_assignment on the N x #real matrix (DETR's matcher).

  Works both ways: N >= #real (every real target gets a prediction) and N < #real (every prediction
  gets a target; with k = 1 or 3 moment queries and up to 5 windows). The cost is padded to a square
  S x S, S = max(N, M): a prediction row paired with a padded target slot, or with one of the extra
  columns, pays ``big``, more than any difference between two assignments of real pairs, so the
  optimum has as many real pairs as possible and, among those, the least cost; the extra rows (no
  prediction) cost 0 everywhere.

  Returns ``(pred_idx_M, valid_M)``: the prediction matched to each target slot, and whether that
  slot is a real target with a real prediction. Other entries are arbitrary distinct indices.
  """
  n, m = cost_NxM.shape
  assert target_mask_M.shape == (m,), (target_mask_M.shape, m)
  size = max(n, m)
  target_mask_M = target_mask_M.astype(bool)
  cost_NxM = lax.stop_gradient(cost_NxM)
  real = jnp.where(target_mask_M[None, :], cost_NxM, 0.0)
  big = 1.0 + 2.0 * size * (real.max() - real.min())
  real_rows_NxS = jnp.pad(
      jnp.where(target_mask_M[None, :], cost_NxM, big),
      ((0, 0), (0, size - m)),
      constant_values=big,
  )
  square_SxS = jnp.pad(real_rows_NxS, ((0, size - n), (0, 0)))
  row_ind, col_ind = hungarian_assignment(square_SxS)
  pred_of_col = jnp.zeros((size,), jnp.int32).at[col_ind].set(row_ind)[:m]
  valid_M = target_mask_M & (pred_of_col < n)
  return jnp.minimum(pred_of_col, n - 1), valid_M


def batched_match(cost_BxNxM, target_mask_BxM):
  """``match_rectangular`` over a leading batch axis."""
  return jax.vmap(match_rectangular)(cost_BxNxM, target_mask_BxM)
