"""Transformer building blocks of LMR: post-norm attention blocks without FFN expansion (paper IV-B)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """Fixed sine/cosine position codes (length, dim), as DETR-style video models use."""
  positions = np.arange(length, dtype=np.float32)[:, None]
  freqs = np.exp(-np.log(10000.0) * np.arange(0, dim, 2, dtype=np.float32) / dim)
  codes = np.zeros((length, dim), np.float32)
  codes[:, 0::2] = np.sin(positions * freqs)
  codes[:, 1::2] = np.cos(positions * freqs)
  return codes


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


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jnp.ndarray, float]:
  """A Bernoulli keep mask and its keep probability ``1 - rate``, with ``rate`` drawn at 8-bit
  resolution when that is exact (0.5, 0.25, ...) and at 16-bit resolution (rounded to 2^-16) otherwise.

  jax.random's threefry costs ~5x more per element on CPU than XLA's RngBitGenerator, and ~60 M draws
  per QVHighlights train step (most on the 2818/4096-d input features) made it a fifth of the step; so
  the mask comes from XLA's threefry, four 8-bit or two 16-bit draws per 32-bit word.
  """
  bits_per_draw = 8 if float(rate * 2**8).is_integer() else 16
  levels = 2**bits_per_draw
  steps = min(round(rate * levels), levels - 1)
  draws_per_word = 32 // bits_per_draw
  size = int(np.prod(shape))
  seed_u32x4 = jax.random.bits(rng, (4,), jnp.uint32)
  _, bits = jax.lax.rng_bit_generator(
      seed_u32x4,
      (-(-size // draws_per_word),),
      dtype=jnp.uint32,
      algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY,
  )
  draw_dtype = jnp.uint8 if bits_per_draw == 8 else jnp.uint16
  bits = jax.lax.bitcast_convert_type(bits, draw_dtype).reshape(-1)[:size].reshape(shape)
  return bits >= np.asarray(steps, draw_dtype), 1.0 - steps / levels


class Dropout(nn.Module):
  """Inverted dropout, as nn.Dropout, drawing its mask with ``keep_mask``."""

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    keep, keep_prob = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
    return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


def _attention(q_BxQxHxd, k_BxKxHxd, v_BxKxHxd, bias_Bx1xQxK, dropout_QxK):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxd / np.sqrt(q_BxQxHxd.shape[-1]), k_BxKxHxd)
  weights = jax.nn.softmax(logits + bias_Bx1xQxK)
  return weights, jnp.einsum("bhqk,bkhd->bqhd", weights * dropout_QxK, v_BxKxHxd)


def dot_product_attention(
    query,
    key,
    value,
    mask=None,
    broadcast_dropout: bool = True,
    dropout_rng=None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    module=None,
):
  """nn.dot_product_attention's computation (mask, softmax, dropout shared over batch and heads),
  laid out for CPU: the (B, heads, Q, K) logits are processed a few batch rows at a time so that their
  softmax, dropout and backward passes stay in cache instead of streaming ~50 MB tensors from memory
  (the encoder at QVHighlights shapes: 64 x 8 x 151 x 151), and the dropout mask is applied inside
  that loop rather than materialised at full size.
  """
  assert broadcast_dropout, "dropout masks are shared over batch and heads, as nn.Dropout's default"
  batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
  if mask is None:
    mask = jnp.ones((batch, 1, q_len, k_len), bool)
  bias_Bx1xQxK = jnp.where(mask, 0.0, jnp.finfo(query.dtype).min).astype(query.dtype)
  if deterministic or dropout_rate == 0.0:
    dropout_QxK = jnp.ones((q_len, k_len), query.dtype)
  else:
    keep_QxK, keep_prob = keep_mask(dropout_rng, dropout_rate, (q_len, k_len))
    dropout_QxK = jnp.where(keep_QxK, 1.0 / keep_prob, 0.0).astype(query.dtype)
  if module is not None and module.is_mutable_collection("intermediates"):
    weights, out = _attention(query, key, value, bias_Bx1xQxK, dropout_QxK)
    module.sow("intermediates", "attention_weights", weights)
    return out
  chunks = _num_chunks(batch, q_len * k_len * query.shape[2])
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


class FeatureNorm(nn.Module):
  """Parameter-free LayerNorm, then Dropout, on input features, which are data.

  Unlike QD-DETR's input LayerNorm it has no scale and bias: the Dense that follows absorbs them
  (diag(scale) W is any matrix), and without them no gradient flows below that Dense, so the backward
  pass skips the (B*L, 4096) input gradient and its elementwise passes, ~10 % of the QVHighlights
  step's FLOPs (README, "Benchmark").
  """

  rate: float
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = jax.lax.stop_gradient(x)
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    normalized = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    if not train or self.rate == 0.0:
      return normalized
    keep, keep_prob = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
    return jnp.where(keep, normalized / keep_prob, 0.0)


class InputProjection(nn.Module):
  """Two LayerNorm -> Dropout -> Dense stages mapping one feature stream to the hidden width."""

  hidden_dim: int
  input_dropout: float
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = FeatureNorm(self.input_dropout)(x, train=train)
    x = nn.relu(nn.Dense(self.hidden_dim)(x))
    x = nn.LayerNorm(name="LayerNorm_1")(x)
    x = Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.hidden_dim)(x)


class FeedForward(nn.Module):
  ffn_dim: int
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.relu(nn.Dense(self.ffn_dim)(x))
    y = Dropout(self.dropout, deterministic=not train)(y)
    return nn.Dense(x.shape[-1])(y)


class AttentionBlock(nn.Module):
  """Attention (self or cross) then feed-forward, each with residual and LayerNorm (post-norm).

  Position codes are added to queries and keys only, as in DETR, so values stay content-only.
  """

  num_heads: int
  ffn_dim: int
  dropout: float
  with_ffn: bool = True

  @nn.compact
  def __call__(self, x_BxQxD, kv_BxKxD, mask_BxQxK, *, train: bool, pos_q=0.0, pos_k=0.0):
    # sow_weights stores the (B, heads, Q, K) weights for the attention figures; it is a no-op unless
    # apply is called with mutable=["intermediates"].
    attn = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dropout_rate=self.dropout,
        deterministic=not train,
        attention_fn=dot_product_attention,
    )(x_BxQxD + pos_q, kv_BxKxD + pos_k, kv_BxKxD, mask=mask_BxQxK[:, None], sow_weights=True)
    x = nn.LayerNorm()(x_BxQxD + Dropout(self.dropout, deterministic=not train)(attn))
    if not self.with_ffn:
      return x
    y = FeedForward(self.ffn_dim, self.dropout)(x, train=train)
    return nn.LayerNorm()(x + Dropout(self.dropout, deterministic=not train)(y))


def attention_mask(q_mask_BxQ: jnp.ndarray, k_mask_BxK: jnp.ndarray) -> jnp.ndarray:
  """Keys are masked; padded query rows attend to everything (their outputs are never used)."""
  return jnp.broadcast_to(k_mask_BxK[:, None, :], q_mask_BxQ.shape + k_mask_BxK.shape[-1:])


class MLP(nn.Module):
  hidden_dim: int
  out_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    for _ in range(self.num_layers - 1):
      x = nn.relu(nn.Dense(self.hidden_dim)(x))
    return nn.Dense(self.out_dim)(x)
