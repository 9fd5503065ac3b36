"""Temporal span utilities (normalised [0, 1] time axis).

Spans live on the last axis as pairs. Two formats are used:

* ``cxw``: (center, width) -- what the moment queries regress, because an
  unconstrained center/width pair always describes a span with end >= start
  once the width is non-negative.
* ``se``: (start, end) -- what IoU is defined on.

The pairwise functions take 2-D inputs (N x 2 and M x 2); use ``jax.vmap`` for
a batch dimension. They are safe for zero-length spans: every division has an
``eps`` floor, so values and gradients stay finite.
"""

import jax.numpy as jnp

_EPS = 1e-6


def cxw_to_se(spans_cxw):
  """(center, width) -> (start, end). No clipping: callers decide the range."""
  center, width = spans_cxw[..., 0], spans_cxw[..., 1]
  return jnp.stack([center - 0.5 * width, center + 0.5 * width], axis=-1)


def se_to_cxw(spans_se):
  """(start, end) -> (center, width). Inverse of ``cxw_to_se``."""
  start, end = spans_se[..., 0], spans_se[..., 1]
  return jnp.stack([0.5 * (start + end), end - start], axis=-1)


def _length(spans_se):
  return spans_se[..., 1] - spans_se[..., 0]


def pairwise_temporal_iou(spans_a_Nx2, spans_b_Mx2, eps=_EPS):
  """IoU of every span in ``a`` with every span in ``b`` (start/end format).

  Returns ``(iou_NxM, union_NxM)``; the union is returned because GIoU
  needs it and recomputing it would duplicate the work. The union is floored
  at ``eps`` in the division only, so two zero-length spans give IoU 0 (not
  NaN) and identical non-degenerate spans still give exactly 1.
  """
  a = spans_a_Nx2[:, None, :]
  b = spans_b_Mx2[None, :, :]
  left = jnp.maximum(a[..., 0], b[..., 0])
  right = jnp.minimum(a[..., 1], b[..., 1])
  inter_NxM = jnp.maximum(right - left, 0.0)
  union_NxM = _length(a) + _length(b) - inter_NxM
  iou_NxM = inter_NxM / jnp.maximum(union_NxM, eps)
  return iou_NxM, union_NxM


def pairwise_generalized_iou(spans_a_Nx2, spans_b_Mx2, eps=_EPS):
  """1-D generalized IoU: ``IoU - (enclosing - union) / enclosing``.

  Unlike IoU it keeps a useful signal for disjoint spans (it decreases as
  they move apart), which is why DETR-style losses and matchers use it.
  Range is [-1, 1]. Inputs are start/end spans with end >= start.
  """
  iou_NxM, union_NxM = pairwise_temporal_iou(spans_a_Nx2, spans_b_Mx2, eps)
  a = spans_a_Nx2[:, None, :]
  b = spans_b_Mx2[None, :, :]
  enclosing_NxM = jnp.maximum(a[..., 1], b[..., 1]) - jnp.minimum(a[..., 0], b[..., 0])
  return iou_NxM - (enclosing_NxM - union_NxM) / jnp.maximum(enclosing_NxM, eps)
