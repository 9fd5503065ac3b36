"""LMR's transformer blocks, layer for layer QD-DETR's (the paper's base: "following [1]").

Every block here has a one-to-one counterpart in QD-DETR's PyTorch modules, so a QD-DETR state_dict maps
onto our parameters (lmr_jax/port/qd_detr.py) and its eval-mode outputs are reproduced to float rounding
(tests/test_port.py). Shapes are suffixed: B batch, L clips, T query tokens, K moment queries, D hidden.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmr_jax.errors import ConfigError


CLIP_POSITIONS = ("normalized", "index")


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


ATTENTION = ("auto", "chunked", "einsum")


def resolve_attention(name: str, platform: str | None = None) -> str:
  """``model.attention`` -> the implementation to trace: "auto" is "chunked" on the CPU and "einsum"
  on GPU/TPU (``platform``: what the step is compiled for, default ``jax.default_backend()``)."""
  if name not in ATTENTION:
    raise ConfigError(f"config.model.attention '{name}' is not one of {ATTENTION}")
  if name != "auto":
    return name
  return "chunked" if (platform or jax.default_backend()) == "cpu" else "einsum"


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
    broadcast_dropout: bool = True,
    dropout_rng=None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    module=None,
    implementation: str = "einsum",
):
  """nn.dot_product_attention's computation (mask, softmax, dropout shared over batch and heads).

  ``implementation`` (``resolve_attention``): "einsum" is one batched pass, what GPUs and TPUs want
  (a few large kernels); "chunked" is laid out for the CPU: the (B, heads, Q, K) logits are processed
  a few batch rows at a time so that their softmax, dropout and backward passes stay in cache instead
  of streaming ~50 MB tensors from memory (the encoder at QVHighlights shapes: 64 x 8 x 151 x 151).
  Both apply the dropout mask inside the attention rather than materialising it at full size, and
  give the same values (tests/test_model.py).
  """
  assert broadcast_dropout, "dropout masks are shared over batch and heads, as nn.Dropout's default"
  batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
  if mask is None:
    mask = jnp.ones((batch, 1, q_len, k_len), bool)
  bias_Bx1xQxK = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
  if deterministic or dropout_rate == 0.0:
    dropout_QxK = jnp.ones((q_len, k_len), jnp.float32)
  else:
    keep_QxK, keep_prob = keep_mask(dropout_rng, dropout_rate, (q_len, k_len))
    dropout_QxK = jnp.where(keep_QxK, 1.0 / keep_prob, 0.0)
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


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis: the two-pass variance (flax's one-pass E[x^2] - E[x]^2
  loses digits in float32 when a feature's mean is large against its spread), statistics in float32,
  parameters ``scale`` and ``bias`` as flax's LayerNorm names them, output in ``dtype``.

  Written out rather than flax's ``nn.LayerNorm`` because that one multiplies the per-row
  ``rsqrt(var + eps)`` by ``scale`` into a full-size (B, L, D) factor that XLA keeps for the backward
  pass; on the CPU, writing those factors (39 MB for the 4096-d caption input per QVHighlights batch)
  took ~10 % of a train step. Here the normalised rows are scaled directly.
  """

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (dim,))
    bias = self.param("bias", nn.initializers.zeros, (dim,))
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(-1, keepdims=True)
    centered = x32 - mean
    var = (centered * centered).mean(-1, keepdims=True)
    normalised = centered * jax.lax.rsqrt(var + self.epsilon)
    return (normalised * scale + bias).astype(self.dtype)


def layer_norm(name: str, dtype=jnp.float32, epsilon: float = 1e-5) -> LayerNorm:
  """QD-DETR's LayerNorm (torch's epsilon 1e-5), output in ``dtype``."""
  return LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


class InputNorm(nn.Module):
  """LayerNorm of input features, then dropout; QD-DETR's LinearLayer begins this way.

  ``affine=False`` drops the LayerNorm's scale and bias: the Dense that follows can absorb them (in
  evaluation exactly: W (g x + b) + c = (W diag g) x + (W b + c)), and without them no gradient flows
  below that Dense, so the backward pass skips the (B*L, 4096) input gradient, ~10 % of a QVHighlights
  step's FLOPs (docs/benchmark.md). The default keeps QD-DETR's affine LayerNorm. Statistics are
  float32; the output is ``dtype``.
  """

  rate: float
  affine: bool = True
  epsilon: float = 1e-5  # torch.nn.LayerNorm's
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.affine:
      x = layer_norm("LayerNorm", self.dtype, self.epsilon)(x)
    else:
      x = jax.lax.stop_gradient(x).astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = x.mean(-1, keepdims=True)
      var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
      x = ((x - mean) * jax.lax.rsqrt(var + self.epsilon)).astype(self.dtype)
    if not train or self.rate == 0.0:
      return x
    keep, keep_prob = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
    return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


class InputProjection(nn.Module):
  """QD-DETR's two-stage input projection: [LayerNorm -> Dropout -> Dense -> ReLU], then
  [LayerNorm -> Dropout -> Dense], both stages with the input dropout rate."""

  hidden_dim: int
  input_dropout: float
  affine_first_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt = self.dtype
    x = InputNorm(self.input_dropout, self.affine_first_norm, dtype=dt, name="norm_0")(
        x, train=train
    )
    x = nn.relu(nn.Dense(self.hidden_dim, dtype=dt, name="dense_0")(x))
    x = InputNorm(self.input_dropout, dtype=dt, name="norm_1")(x, train=train)
    return nn.Dense(self.hidden_dim, dtype=dt, name="dense_1")(x)


class PReLU(nn.Module):
  """torch.nn.PReLU(): one learned negative slope, initialised at 0.25 (QD-DETR's FFN activation)."""

  @nn.compact
  def __call__(self, x):
    slope = self.param("slope", nn.initializers.constant(0.25), ())
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class FeedForward(nn.Module):
  """Dense -> PReLU -> Dropout -> Dense (QD-DETR's linear1, activation, dropout, linear2)."""

  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = PReLU(name="activation")(nn.Dense(self.ffn_dim, dtype=self.dtype, name="linear1")(x))
    y = Dropout(self.dropout, deterministic=not train)(y)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="linear2")(y)


def key_mask(k_mask_BxK: jnp.ndarray, num_queries: int) -> jnp.ndarray:
  """(B, Q, K) attention mask from the keys' padding mask: padded keys are never attended to;
  padded query rows attend like real ones (their outputs are never read)."""
  return jnp.broadcast_to(
      k_mask_BxK[:, None, :], k_mask_BxK.shape[:1] + (num_queries,) + k_mask_BxK.shape[1:]
  )


def qd_detr_t2v_mask(context_mask_BxL, lang_mask_BxT, num_heads: int, group_size: int):
  """The (B, heads, L, T) mask QD-DETR's T2V attention really applies, for exact parity only.

  QD-DETR builds a (B, L, T) mask of (padded clip, padded token) pairs and tiles it with
  ``repeat(nhead, 1, 1)``, but torch reads a 3-D mask as (B * nhead) rows in batch-major order, so head
  h of example b gets the mask of example (b * nhead + h) mod B: an example's outputs depend on the
  padding of the other examples in its batch. ``group_size`` is the batch QD-DETR ran (B; the
  negative pass is a second batch of B). Off by default (``model.qd_detr_t2v_mask``): a prediction
  should not depend on its batch; the parity check turns it on.
  """
  rows = np.arange(context_mask_BxL.shape[0])
  group, b = rows // group_size, rows % group_size
  src_BxH = (
      group[:, None] * group_size + (b[:, None] * num_heads + np.arange(num_heads)) % group_size
  )
  blocked = (~context_mask_BxL)[src_BxH][..., :, None] & (~lang_mask_BxT)[src_BxH][..., None, :]
  return lang_mask_BxT[:, None, None, :] & ~blocked


class Attend(nn.Module):
  """Multi-head attention over already projected queries, keys and values, then the output Dense.

  Queries and keys may be wider than values (DAB-DETR's cross-attention concatenates a position part to
  each head); the logits are scaled by the query head width, as in QD-DETR's attention. Weights are
  sown as ``attention_weights`` (B, heads, Q, K) when apply runs with mutable=["intermediates"].
  ``attention``: an implementation of ``dot_product_attention`` (``resolve_attention``'s result).
  """

  num_heads: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, q_BxQxE, k_BxKxE, v_BxKxD, mask_BxQxK, *, train: bool):
    heads = lambda x: x.reshape(x.shape[:2] + (self.num_heads, -1))  # noqa: E731
    rng = self.make_rng("dropout") if train and self.dropout > 0.0 else None
    out_BxQxHxd = dot_product_attention(
        heads(q_BxQxE),
        heads(k_BxKxE),
        heads(v_BxKxD),
        mask=mask_BxQxK if mask_BxQxK.ndim == 4 else mask_BxQxK[:, None],
        dropout_rng=rng,
        dropout_rate=self.dropout,
        deterministic=not train,
        module=self,
        implementation=self.attention,
    )
    out_BxQxD = out_BxQxHxd.reshape(out_BxQxHxd.shape[:2] + (-1,))
    return nn.Dense(v_BxKxD.shape[-1], dtype=self.dtype, name="out_proj")(out_BxQxD)


class MultiHeadAttention(nn.Module):
  """torch.nn.MultiheadAttention: q, k, v Dense projections, attention, output Dense."""

  num_heads: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, q_BxQxD, k_BxKxD, v_BxKxD, mask_BxQxK, *, train: bool):
    d = q_BxQxD.shape[-1]
    q = nn.Dense(d, dtype=self.dtype, name="q_proj")(q_BxQxD)
    k = nn.Dense(d, dtype=self.dtype, name="k_proj")(k_BxKxD)
    v = nn.Dense(d, dtype=self.dtype, name="v_proj")(v_BxKxD)
    return Attend(self.num_heads, self.dropout, self.dtype, self.attention, name="attend")(
        q, k, v, mask_BxQxK, train=train
    )


class T2VLayer(nn.Module):
  """One layer of QD-DETR's text-to-video encoder, LMR's VQF (paper Eq. 4).

  Context tokens (clips or their captions) attend to the query's tokens; the residual keeps the
  un-normalised sum: x = c + Attn(c + pos, t, t); x = norm2(x + FFN(norm1(x))) (QD-DETR's own order).
  """

  num_heads: int
  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, context_BxLxD, pos_BxLxD, lang_BxTxD, mask, *, train: bool):
    """``mask``: (B, L, T) or, per head, (B, heads, L, T); True where a clip may attend a token."""
    dt = self.dtype
    attn = MultiHeadAttention(self.num_heads, self.dropout, dt, self.attention, name="self_attn")(
        context_BxLxD + pos_BxLxD, lang_BxTxD, lang_BxTxD, mask, train=train
    )
    x = context_BxLxD + Dropout(self.dropout, deterministic=not train)(attn)
    y = FeedForward(self.ffn_dim, self.dropout, dt, name="ffn")(
        layer_norm("norm1", dt)(x), train=train
    )
    x = x + Dropout(self.dropout, deterministic=not train)(y)
    return layer_norm("norm2", dt)(x)


class EncoderLayer(nn.Module):
  """A post-norm self-attention layer (DETR's TransformerEncoderLayer, QD-DETR's PReLU FFN)."""

  num_heads: int
  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x_BxLxD, pos_BxLxD, mask_BxL, *, train: bool):
    dt = self.dtype
    qk = x_BxLxD + pos_BxLxD
    attn = MultiHeadAttention(self.num_heads, self.dropout, dt, self.attention, name="self_attn")(
        qk, qk, x_BxLxD, key_mask(mask_BxL, x_BxLxD.shape[1]), train=train
    )
    x = layer_norm("norm1", dt)(x_BxLxD + Dropout(self.dropout, deterministic=not train)(attn))
    y = FeedForward(self.ffn_dim, self.dropout, dt, name="ffn")(x, train=train)
    return layer_norm("norm2", dt)(x + Dropout(self.dropout, deterministic=not train)(y))


class MLP(nn.Module):
  """Dense layers with ReLU between them (DETR's MLP heads)."""

  hidden_dim: int
  out_dim: int
  num_layers: int
  zero_init_last: bool = False  # DAB-DETR's bbox_embed: refinement starts as the identity
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers - 1):
      x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"layers_{i}")(x))
    init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
    last = f"layers_{self.num_layers - 1}"
    return nn.Dense(self.out_dim, kernel_init=init, dtype=self.dtype, name=last)(x)
