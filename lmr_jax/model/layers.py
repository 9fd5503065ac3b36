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

from lmr_jax.model import ops


class Dropout(nn.Module):
  """``ops.dropout`` as a module: it draws from the "dropout" rng stream when not deterministic."""

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    return ops.dropout(x, self.rate, self.make_rng("dropout"))


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis (``ops.normalize_rows``: two-pass variance, float32
  statistics), parameters ``scale`` and ``bias`` as flax's LayerNorm names them, output in ``dtype``.
  Written out so that the normalised rows are scaled directly (docs/benchmark.md, "Written-out ops").
  """

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (dim,))
    bias = self.param("bias", nn.initializers.zeros, (dim,))
    return (ops.normalize_rows(x, self.epsilon) * scale + bias).astype(self.dtype)


def layer_norm(name: str, dtype=jnp.float32, epsilon: float = 1e-5) -> LayerNorm:
  """QD-DETR's LayerNorm (torch's epsilon 1e-5), output in ``dtype``."""
  return LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


class InputNorm(nn.Module):
  """LayerNorm of input features, then dropout; QD-DETR's LinearLayer begins this way.

  ``affine=False`` drops the LayerNorm's scale and bias: the Dense that follows can absorb them (in
  evaluation exactly: W (g x + b) + c = (W diag g) x + (W b + c)), and without them no gradient flows
  below that Dense, so the backward pass skips the input gradient (fewer FLOPs per step,
  docs/benchmark.md). The default keeps QD-DETR's affine LayerNorm. Output in ``dtype``.
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
      x = ops.normalize_rows(jax.lax.stop_gradient(x), self.epsilon).astype(self.dtype)
    if not train or self.rate == 0.0:
      return x
    # Drawn from this module's rng stream (not a Dropout child's): the masks runs were trained with.
    return ops.dropout(x, self.rate, self.make_rng("dropout"))


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


class Attend(nn.Module):
  """Multi-head attention over already projected queries, keys and values, then the output Dense.

  Queries and keys may be wider than values (DAB-DETR's cross-attention concatenates a position part to
  each head); the logits are scaled by the query head width, as in QD-DETR's attention. Weights are
  sown as ``attention_weights`` (B, heads, Q, K) when apply runs with mutable=["intermediates"].
  ``attention``: an implementation of ``ops.dot_product_attention`` (``ops.resolve_attention``'s).
  """

  num_heads: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, q_BxQxE, k_BxKxE, v_BxKxD, mask_BxQxK, *, train: bool):
    heads = lambda x: x.reshape(x.shape[:2] + (self.num_heads, -1))  # noqa: E731
    rng = self.make_rng("dropout") if train and self.dropout > 0.0 else None
    out_BxQxHxd = ops.dot_product_attention(
        heads(q_BxQxE),
        heads(k_BxKxE),
        heads(v_BxKxD),
        mask=mask_BxQxK if mask_BxQxK.ndim == 4 else mask_BxQxK[:, None],
        dropout_rng=rng,
        dropout_rate=self.dropout,
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
        qk, qk, x_BxLxD, ops.key_mask(mask_BxL, x_BxLxD.shape[1]), train=train
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
