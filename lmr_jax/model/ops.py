"""The model's numerical ops, apart from its blocks: positions, dropout, row normalisation, attention.

Pure functions of arrays (and a PRNG key); ``layers.py`` builds QD-DETR's blocks from them. Why each
is written out rather than taken from flax, with the measurements, is in docs/benchmark.md
("Written-out ops").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmr_jax.config_keys import ATTENTION
from lmr_jax.errors import ConfigError

# --- positions ------------------------------------------------------------------------------------


def masked_sine_positions(
    mask_BxL: jnp.ndarray, dim: int, temperature: float = 10000.0, normalize: bool = True
):
  """DETR's sine code of the clip index, (B, L, dim), from the index counted over real clips.

  ``normalize`` (QD-DETR's PositionEmbeddingSine with normalize=True): position = cumsum(mask) / #real
  * 2pi, so a clip's code says where it sits in its video, not how much padding follows; the fastest
  frequency then turns once over the whole video, and neighbouring clips get nearly the same code.
  ``normalize=False`` (DETR's default): position = cumsum(mask), the raw index, whose fast
  frequencies tell neighbouring clips apart.
  """
  counts_BxL = jnp.cumsum(mask_BxL.astype(jnp.float32), axis=1)
  if normalize:
    angle_BxL = counts_BxL / (counts_BxL[:, -1:] + 1e-6) * 2 * np.pi
  else:
    angle_BxL = counts_BxL
  freqs = temperature ** (2 * (np.arange(dim) // 2) / dim)
  angles = angle_BxL[..., None] / freqs
  return jnp.where(np.arange(dim) % 2 == 0, jnp.sin(angles), jnp.cos(angles))


def sine_embed_spans(spans_BxKx2: jnp.ndarray, dim: int) -> jnp.ndarray:
  """Sine/cosine codes of (center, width) in [0, 1], dim/2 per coordinate (DAB-DETR's anchor code)."""
  half = dim // 2
  freqs = 10000.0 ** (2 * (jnp.arange(half) // 2) / half)
  angles = spans_BxKx2[..., None] * 2 * jnp.pi / freqs  # (B, K, 2, half)
  codes = jnp.where(jnp.arange(half) % 2 == 0, jnp.sin(angles), jnp.cos(angles))
  return codes.reshape(spans_BxKx2.shape[:-1] + (2 * half,))


def inverse_sigmoid(x: jnp.ndarray, eps: float = 1e-3) -> jnp.ndarray:
  x = jnp.clip(x, eps, 1 - eps)
  return jnp.log(x / (1 - x))


# --- dropout --------------------------------------------------------------------------------------


def _mix32(x_u32: jnp.ndarray) -> jnp.ndarray:
  """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons' hash-prospector: every input
  bit flips each output bit with probability ~1/2)."""
  x_u32 = x_u32 ^ (x_u32 >> 16)
  x_u32 = x_u32 * np.uint32(0x7FEB352D)
  x_u32 = x_u32 ^ (x_u32 >> 15)
  x_u32 = x_u32 * np.uint32(0x846CA68B)
  return x_u32 ^ (x_u32 >> 16)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jnp.ndarray, float]:
  """A Bernoulli keep mask and its keep probability ``1 - rate`` (``rate`` at 32-bit resolution).

  Counter-based: element i is kept when hash(hash(i ^ s0) + s1) >= rate * 2^32, with the 64-bit
  seed (s0, s1) drawn from ``rng`` by jax.random. No bits array exists: XLA fuses the hash into the
  op that applies the mask, on every backend (the way GPU dropout kernels draw Philox in-kernel).
  XLA's RngBitGenerator cost ~15 ms per dropout at QVHighlights shapes on the CPU, an eighth of a
  train step (docs/benchmark.md, "Written-out ops"); tests/test_model.py checks the rate and the
  independence of neighbouring elements and of seeds.
  """
  threshold = min(round(rate * 2**32), 2**32 - 1)
  size = int(np.prod(shape))
  if size >= 2**32:
    raise ValueError(f"dropout over {size} elements: the counter is 32-bit")
  seed_u32x2 = jax.random.bits(rng, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _mix32(_mix32(index ^ seed_u32x2[0]) + seed_u32x2[1])
  return bits >= np.uint32(threshold), 1.0 - threshold / 2**32


def dropout(x: jnp.ndarray, rate: float, rng: jax.Array | None) -> jnp.ndarray:
  """Inverted dropout (as nn.Dropout): each element kept with probability ``1 - rate`` and scaled by
  its inverse; ``rng=None`` or ``rate=0`` is the identity. The model's one dropout."""
  if rng is None or rate == 0.0:
    return x
  keep, keep_prob = keep_mask(rng, rate, x.shape)
  return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


# --- normalisation --------------------------------------------------------------------------------


def normalize_rows(x: jnp.ndarray, epsilon: float) -> jnp.ndarray:
  """(x - mean) / sqrt(var + epsilon) over the last axis, in float32 (or wider), with the two-pass
  variance: flax's one-pass E[x^2] - E[x]^2 loses digits when a feature's mean is large against its
  spread."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  centered = x32 - x32.mean(-1, keepdims=True)
  var = (centered * centered).mean(-1, keepdims=True)
  return centered * jax.lax.rsqrt(var + epsilon)


# --- attention ------------------------------------------------------------------------------------


def resolve_attention(name: str, platform: str | None = None) -> str:
  """``model.attention`` -> the implementation to trace: "auto" is "chunked" on the CPU and "einsum"
  on GPU/TPU (``platform``: what the step is compiled for, default ``jax.default_backend()``)."""
  if name not in ATTENTION:
    raise ConfigError(f"config.model.attention '{name}' is not one of {ATTENTION}")
  if name != "auto":
    return name
  return "chunked" if (platform or jax.default_backend()) == "cpu" else "einsum"


def key_mask(k_mask_BxK: jnp.ndarray, num_queries: int) -> jnp.ndarray:
  """(B, Q, K) attention mask from the keys' padding mask: padded keys are never attended to;
  padded query rows attend like real ones (their outputs are never read)."""
  return jnp.broadcast_to(
      k_mask_BxK[:, None, :], k_mask_BxK.shape[:1] + (num_queries,) + k_mask_BxK.shape[1:]
  )


def qd_detr_t2v_mask(context_mask_BxL, lang_mask_BxT, num_heads: int, group_size):
  """The (B, heads, L, T) mask QD-DETR's T2V attention really applies, for exact parity only.

  QD-DETR builds a (B, L, T) mask of (padded clip, padded token) pairs and tiles it with
  ``repeat(nhead, 1, 1)``, but torch reads a 3-D mask as (B * nhead) rows in batch-major order, so head
  h of example b gets the mask of example (b * nhead + h) mod B: an example's outputs depend on the
  padding of the other examples in its batch. ``group_size`` is the batch QD-DETR ran (B; the
  negative pass is a second batch of B; at evaluation the real rows of a padded batch, QD-DETR's last
  batch holding only the queries left), a Python int or a traced scalar; rows past the last whole
  group are padding and read the last row. Off by default (``model.qd_detr_t2v_mask``): a prediction
  should not depend on its batch; the parity check and ``eval_protocol="qd_detr"`` turn it on.
  """
  context_mask_BxL, lang_mask_BxT = jnp.asarray(context_mask_BxL), jnp.asarray(lang_mask_BxT)
  num_rows = context_mask_BxL.shape[0]
  group_size = jnp.maximum(group_size, 1)  # an all-padding batch (a process with no rows left)
  rows = jnp.arange(num_rows)
  group, b = rows // group_size, rows % group_size
  src_BxH = (
      group[:, None] * group_size + (b[:, None] * num_heads + jnp.arange(num_heads)) % group_size
  )
  src_BxH = jnp.minimum(src_BxH, num_rows - 1)
  blocked = (~context_mask_BxL)[src_BxH][..., :, None] & (~lang_mask_BxT)[src_BxH][..., None, :]
  return lang_mask_BxT[:, None, None, :] & ~blocked


def _attention(q_BxQxHxd, k_BxKxHxd, v_BxKxHxd, bias_Bx1xQxK, dropout_QxK):
  """Softmax attention with the mask bias and the softmax in float32 whatever the compute dtype (bf16
  probabilities of 151 keys would lose the small weights); the logits come out of the matmul in the
  compute dtype (accumulated in float32 by the matmul units), so that its backward pass stays in that
  dtype too, and the weights go back to the values' dtype for the second matmul."""
  root_d = np.asarray(np.sqrt(q_BxQxHxd.shape[-1]), q_BxQxHxd.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxd / root_d, k_BxKxHxd)
  weights = jax.nn.softmax(logits.astype(jnp.float32) + bias_Bx1xQxK)
  mixed = (weights * dropout_QxK).astype(v_BxKxHxd.dtype)
  return weights, jnp.einsum("bhqk,bkhd->bqhd", mixed, v_BxKxHxd)


def dot_product_attention(
    query,
    key,
    value,
    mask=None,
    *,
    dropout_rng=None,
    dropout_rate: float = 0.0,
    module=None,
    implementation: str = "einsum",
):
  """nn.dot_product_attention's computation: mask, softmax, and dropout on the weights with one mask
  shared over batch and heads (nn.Dropout's broadcast default); ``dropout_rng=None`` is evaluation.

  ``implementation`` (``resolve_attention``): "einsum" is one batched pass, what GPUs and TPUs want;
  "chunked" processes the (B, heads, Q, K) logits a few batch rows at a time under ``lax.map`` so that
  they stay in a CPU's cache. Both give the same values (tests/test_model.py). With ``module`` and its
  "intermediates" collection mutable, the weights are sown as ``attention_weights``.
  """
  batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
  if mask is None:
    mask = jnp.ones((batch, 1, q_len, k_len), bool)
  bias_Bx1xQxK = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
  dropout_QxK = dropout(jnp.ones((q_len, k_len), jnp.float32), dropout_rate, dropout_rng)
  if module is not None and module.is_mutable_collection("intermediates"):
    weights, out = _attention(query, key, value, bias_Bx1xQxK, dropout_QxK)
    module.sow("intermediates", "attention_weights", weights)
    return out
  chunks = 1
  if implementation == "chunked":
    chunks = _num_chunks(batch, q_len * k_len * query.shape[2])
  elif implementation != "einsum":
    raise ValueError(f"unknown attention implementation {implementation!r}")
  if chunks == 1:
    return _attention(query, key, value, bias_Bx1xQxK, dropout_QxK)[1]
  split = lambda x: x.reshape((chunks, batch // chunks) + x.shape[1:])  # noqa: E731
  out = jax.lax.map(
      lambda args: _attention(*args, dropout_QxK)[1],
      (split(query), split(key), split(value), split(bias_Bx1xQxK)),
  )
  return out.reshape(query.shape[:-1] + value.shape[-1:])


def _num_chunks(batch: int, logits_per_row: int, chunk_bytes: int = 3 << 20) -> int:
  """The fewest chunks dividing ``batch`` whose float32 logits fit in ``chunk_bytes``."""
  for chunks in range(1, batch + 1):
    if batch % chunks == 0 and 4 * logits_per_row * batch // chunks <= chunk_bytes:
      return chunks
  return batch
