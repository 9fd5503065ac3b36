"""QD-DETR's moment decoder: DAB-DETR's conditional decoder over anchor spans (center, width).

Each of the K moment queries carries an anchor span in sigmoid space. A layer turns the anchor into a
sine code, derives the query's position from it (``ref_point_head``), scales the code by the content
(``query_scale``, from layer 1 on) and by the predicted-to-anchor width ratio (``ref_anchor_head``), and
concatenates it per head to the content in cross-attention, so that content and position match keys
separately. After each layer ``bbox_embed`` refines the anchor; the refined anchor feeds the next layer
without a gradient and the model's ``span_embed`` predicts each layer's span relative to it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmr_jax.model import layers, ops


class DecoderLayer(nn.Module):
  """Self-attention among the queries, conditional cross-attention to the memory, PReLU FFN; each
  followed by residual and LayerNorm. ``is_first``: the content query also gets the anchor's position
  (``ca_qpos_proj``), which later layers do not have."""

  num_heads: int
  ffn_dim: int
  dropout: float
  is_first: bool
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(
      self,
      tgt_BxKxD,
      memory_BxLxD,
      memory_pos_BxLxD,
      memory_mask_BxL,
      query_pos_BxKxD,
      query_sine_BxKxD,
      *,
      train: bool,
  ):
    d, h = tgt_BxKxD.shape[-1], self.num_heads
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)  # noqa: E731
    drop = lambda x: layers.Dropout(self.dropout, deterministic=not train)(x)  # noqa: E731
    num_queries = tgt_BxKxD.shape[1]

    q = dense("sa_qcontent_proj")(tgt_BxKxD) + dense("sa_qpos_proj")(query_pos_BxKxD)
    k = dense("sa_kcontent_proj")(tgt_BxKxD) + dense("sa_kpos_proj")(query_pos_BxKxD)
    v = dense("sa_v_proj")(tgt_BxKxD)
    all_queries = jnp.ones(tgt_BxKxD.shape[:2], bool)
    attend = lambda name: layers.Attend(  # noqa: E731
        h, self.dropout, self.dtype, self.attention, name=name
    )
    attn = attend("self_attn")(q, k, v, ops.key_mask(all_queries, num_queries), train=train)
    tgt = layers.layer_norm("norm1", self.dtype)(tgt_BxKxD + drop(attn))

    q = dense("ca_qcontent_proj")(tgt)
    k = dense("ca_kcontent_proj")(memory_BxLxD)
    v = dense("ca_v_proj")(memory_BxLxD)
    k_pos = dense("ca_kpos_proj")(memory_pos_BxLxD)
    if self.is_first:
      q = q + dense("ca_qpos_proj")(query_pos_BxKxD)
      k = k + k_pos
    q_sine = dense("ca_qpos_sine_proj")(query_sine_BxKxD)
    per_head = lambda x: x.reshape(x.shape[:2] + (h, d // h))  # noqa: E731

    def concat(a, b):  # per head: [content part, position part]
      return jnp.concatenate([per_head(a), per_head(b)], -1).reshape(a.shape[:2] + (2 * d,))

    attn = attend("cross_attn")(
        concat(q, q_sine),
        concat(k, k_pos),
        v,
        ops.key_mask(memory_mask_BxL, num_queries),
        train=train,
    )
    tgt = layers.layer_norm("norm2", self.dtype)(tgt + drop(attn))
    y = layers.FeedForward(self.ffn_dim, self.dropout, self.dtype, name="ffn")(tgt, train=train)
    return layers.layer_norm("norm3", self.dtype)(tgt + drop(y))


class AnchorDecoder(nn.Module):
  """The decoder stack; returns per layer the normalised hidden states (layers, B, K, D) and the anchor
  each layer started from (layers, B, K, 2), in sigmoid space."""

  num_layers: int
  num_heads: int
  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(
      self, tgt_BxKxD, anchors_BxKx2, memory_BxLxD, memory_pos_BxLxD, memory_mask_BxL, *, train
  ):
    d, dt = tgt_BxKxD.shape[-1], self.dtype
    ref_point_head = layers.MLP(d, d, 2, dtype=dt, name="ref_point_head")
    query_scale = layers.MLP(d, d, 2, dtype=dt, name="query_scale")
    ref_anchor_head = layers.MLP(d, 1, 2, dtype=dt, name="ref_anchor_head")
    # Anchors stay float32: their refinements are small offsets in sigmoid space.
    bbox_embed = layers.MLP(d, 2, 3, zero_init_last=True, dtype=dt, name="bbox_embed")
    norm = layers.layer_norm("norm", dt)
    output = tgt_BxKxD
    reference = anchors_BxKx2
    hidden, starts = [], []
    for i in range(self.num_layers):
      sine = ops.sine_embed_spans(reference, d)
      query_pos = ref_point_head(sine)
      if i > 0:
        sine = sine * query_scale(output)
      # Width modulation: the code is rescaled by the predicted width over the anchor's width.
      sine = sine * (jax.nn.sigmoid(ref_anchor_head(output)) / reference[..., 1:])
      output = DecoderLayer(
          self.num_heads,
          self.ffn_dim,
          self.dropout,
          is_first=i == 0,
          dtype=dt,
          attention=self.attention,
          name=f"layers_{i}",
      )(output, memory_BxLxD, memory_pos_BxLxD, memory_mask_BxL, query_pos, sine, train=train)
      hidden.append(norm(output))
      # The anchor the predictions of layer i are relative to keeps its gradient (QD-DETR stacks the
      # refined anchors before detaching them); the next layer's input anchor does not.
      starts.append(reference if i == 0 else refined)
      refined = jax.nn.sigmoid(
          bbox_embed(output).astype(jnp.float32) + ops.inverse_sigmoid(reference)
      )
      reference = jax.lax.stop_gradient(refined)
    return jnp.stack(hidden), jnp.stack(starts)
