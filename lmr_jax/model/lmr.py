"""The LMR model (arXiv 2405.12540, Sec. III) on QD-DETR's base, the paper's "following [1]".

Data flow for a batch (B queries, L clips, T query tokens, D hidden, K moment queries):
  clip features (BxLxDv) --proj--> VQF(query tokens), 2 T2V layers -------------------> F~v
  caption vectors (BxLxDc) --proj--> VQF(caption-encoder query tokens), same weights --> F~t
  [saliency token; F~v; F~t] --2 self-attention layers--> F_m = [x_s; x_v; x_t]
  saliency S_i = <W_s x_s, W_v x_v^i> / sqrt(D)                                        (Eq. 5)
  the query sentence x K (content) + K learned anchor spans --2 DAB decoder layers over x_v-->
  per layer (center, width) and foreground/background logits
  (model.decoder_memory="video_and_captions": over [x_v; x_t])

With ``use_caption_context=False`` and ``language_queries=False`` this is QD-DETR, parameter for
parameter (configs/qvh.py:qd_detr; lmr_jax/port/qd_detr.py maps a QD-DETR state_dict onto it).
Every ablation switch of the config is a real code path here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmr_jax.config_keys import CLIP_POSITIONS, DECODER_MEMORY, DTYPES, SALIENCY_TOKENS
from lmr_jax.errors import ConfigError
from lmr_jax.model import decoder, layers, ops


def compute_dtype(model_config: ml_collections.ConfigDict) -> jnp.dtype:
  """``model.dtype``: what matmuls, activations and attention values run in. Parameters, optimizer
  state, LayerNorm statistics, softmax, the model's outputs, the losses and the matcher stay float32.
  """
  if model_config.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype '{model_config.dtype}' is not one of {DTYPES}")
  return jnp.dtype(model_config.dtype)


def masked_mean(x_BxTxD, mask_BxT):
  weights = mask_BxT.astype(x_BxTxD.dtype)[..., None]
  return (x_BxTxD * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


class VideoQueryFusion(nn.Module):
  """VQF: QD-DETR's text-to-video encoder, ``num_layers`` T2V layers; the query tokens only serve as
  keys and values and pass through unchanged."""

  num_layers: int
  num_heads: int
  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, context_BxLxD, pos_BxLxD, lang_BxTxD, mask, *, train: bool):
    for i in range(self.num_layers):
      context_BxLxD = layers.T2VLayer(
          self.num_heads, self.ffn_dim, self.dropout, self.dtype, self.attention, name=f"layers_{i}"
      )(context_BxLxD, pos_BxLxD, lang_BxTxD, mask, train=train)
    return context_BxLxD


class LMR(nn.Module):
  config: ml_collections.ConfigDict  # config.model
  # config.eval_protocol == "qd_detr": at evaluation, QD-DETR's batch-mixing T2V mask over the real
  # rows of the batch (ops.qd_detr_t2v_mask), as its own evaluation computes a ported checkpoint.
  qd_detr_eval: bool = False

  def setup(self):
    cfg = self.config
    d = cfg.hidden_dim
    if cfg.saliency_tokens not in SALIENCY_TOKENS:
      raise ConfigError(f"config.model.saliency_tokens must be one of {SALIENCY_TOKENS}")
    if cfg.decoder_memory not in DECODER_MEMORY:
      raise ConfigError(f"config.model.decoder_memory must be one of {DECODER_MEMORY}")
    if cfg.clip_positions not in CLIP_POSITIONS:
      raise ConfigError(f"config.model.clip_positions must be one of {CLIP_POSITIONS}")
    dt = self.dtype = compute_dtype(cfg)
    # Resolved when the model is traced: the backend it is compiled for picks the attention layout.
    attention = ops.resolve_attention(cfg.attention)
    proj = lambda: layers.InputProjection(  # noqa: E731
        d, cfg.input_dropout, cfg.input_norm_affine, dtype=dt
    )
    self.video_proj = proj()
    self.query_proj = proj()
    self.caption_proj = proj()
    # Caption vectors and the query's caption-encoder tokens come from one frozen embedding table (the
    # paper keeps them "in a unified semantic space"), so one projection serves both and keeps their
    # similarities comparable.
    self.caption_query_proj = self.caption_proj
    vqf = lambda: VideoQueryFusion(  # noqa: E731
        cfg.num_vqf_layers, cfg.num_heads, cfg.ffn_dim, cfg.dropout, dt, attention
    )
    self.visual_vqf = vqf()
    # Weight sharing (paper's WS): the caption stream reuses the visual VQF module itself.
    self.caption_vqf = self.visual_vqf if cfg.share_vqf else vqf()
    # QD-DETR's global token and its learned position: the paper's saliency token.
    self.saliency_token = self.param("saliency_token", nn.initializers.normal(1.0), (d,))
    self.saliency_pos = self.param("saliency_pos", nn.initializers.normal(1.0), (d,))
    self.encoder = [
        layers.EncoderLayer(
            cfg.num_heads, cfg.ffn_dim, cfg.dropout, dt, attention, name=f"encoder_{i}"
        )
        for i in range(cfg.num_encoder_layers)
    ]
    self.saliency_clip_proj = nn.Dense(d, dtype=dt)  # w_v of Eq. 5 (QD-DETR's saliency_proj1)
    self.saliency_query_proj = nn.Dense(d, dtype=dt)  # w_s of Eq. 5 (saliency_proj2)
    # The learned positional parameters of the K moment queries: anchor spans, pre-sigmoid.
    self.moment_anchors = self.param(
        "moment_anchors", nn.initializers.normal(1.0), (cfg.num_queries, 2)
    )
    self.decoder = decoder.AnchorDecoder(
        cfg.num_decoder_layers, cfg.num_heads, cfg.ffn_dim, cfg.dropout, dt, attention
    )
    self.span_head = layers.MLP(d, 2, 3, dtype=dt)
    self.class_head = nn.Dense(2, dtype=dt)  # 0: moment (foreground), 1: background

  def encode(self, streams, video_mask_BxL, *, train: bool, group_size, mix_t2v_masks: bool):
    """VQF + video context modeling over ``streams`` = [(context_BxLxD, lang_BxTxD, lang_mask_BxT,
    vqf)]; returns (the decoder's memory: F_m's x_v or [x_v; x_t] as ``model.decoder_memory`` says,
    its mask, its positions, saliency_BxL).

    A clip and its caption share the clip's position; positions enter queries and keys (DETR). The
    memory's positions are always the normalised code: the decoder matches them against its anchors'
    sine codes, which are fractions of the video (``model.clip_positions`` sets the VQF's and the
    encoder's).
    """
    cfg = self.config
    batch_size, num_clips = video_mask_BxL.shape
    normalized_BxLxD = ops.masked_sine_positions(video_mask_BxL, cfg.hidden_dim)
    if cfg.clip_positions == "normalized":
      pos_BxLxD = normalized_BxLxD
    else:
      pos_BxLxD = ops.masked_sine_positions(video_mask_BxL, cfg.hidden_dim, normalize=False)
    pos_BxLxD, normalized_BxLxD = pos_BxLxD.astype(self.dtype), normalized_BxLxD.astype(self.dtype)
    tokens = []
    for context, lang, lang_mask, vqf in streams:
      if cfg.use_vqf:
        if mix_t2v_masks:
          mask = ops.qd_detr_t2v_mask(video_mask_BxL, lang_mask, cfg.num_heads, group_size)
        else:
          mask = ops.key_mask(lang_mask, num_clips)
        context = vqf(context, pos_BxLxD, lang, mask, train=train)
      tokens.append(context)
    tile = lambda v: jnp.broadcast_to(v.astype(self.dtype), (batch_size, 1, cfg.hidden_dim))  # noqa: E731
    x = jnp.concatenate([tile(self.saliency_token)] + tokens, axis=1)
    positions = jnp.concatenate([tile(self.saliency_pos)] + [pos_BxLxD] * len(tokens), axis=1)
    mask = jnp.concatenate(
        [jnp.ones((batch_size, 1), bool)] + [video_mask_BxL] * len(tokens), axis=1
    )
    for layer in self.encoder:
      x = layer(x, positions, mask, train=train)
    sal_token, memory = x[:, 0], x[:, 1:]
    # The decoder reads the video tokens x_v (Sec. III-C; the first stream's tokens, the caption
    # tokens when the visual stream is off) or every context token [x_v; x_t] (Sec. III-D's H).
    num_read = num_clips if cfg.decoder_memory == "video" else num_clips * len(tokens)
    memory_pos = jnp.concatenate([normalized_BxLxD] * len(tokens), axis=1)[:, :num_read]
    if cfg.saliency_tokens == "video":
      clips = memory[:, :num_clips]  # Eq. 5's video tokens x_v^i: the first stream's
    else:  # "sum": a clip's streams' tokens summed (a named extension, not the paper's)
      clips = sum(memory[:, i * num_clips : (i + 1) * num_clips] for i in range(len(tokens)))
    saliency = jnp.einsum(
        "bld,bd->bl",
        self.saliency_clip_proj(clips),
        self.saliency_query_proj(sal_token),
        preferred_element_type=jnp.float32,
    ) / np.float32(np.sqrt(cfg.hidden_dim))
    return memory[:, :num_read], mask[:, 1 : 1 + num_read], memory_pos, saliency

  def __call__(self, batch, *, train: bool, with_negatives: bool | None = None):
    """Outputs per decoder layer and the clip saliency; with ``with_negatives`` (default: in training,
    for a batch of more than one) also the saliency of each video paired with the next query of the
    batch ("saliency_neg", QD-DETR's inter-video negatives), which only the losses need.

    Long because it is the paper's Sec. III in order (projections, VQF on both streams, context
    modeling, Eq. 5 saliency, language queries, decoder), and one function lets it read that way."""
    cfg = self.config
    video_mask = batch["video_mask"]
    batch_size = video_mask.shape[0]
    if with_negatives is None:
      # A batch of one has no other query (QD-DETR would pair it with itself).
      with_negatives = train and batch_size > 1
    mix_t2v_masks = cfg.qd_detr_t2v_mask or (self.qd_detr_eval and not train)
    group_size = batch_size
    if mix_t2v_masks and not train and "example_mask" in batch:
      # QD-DETR's last evaluation batch holds only the queries left; ours is padded to full size.
      group_size = jnp.sum(batch["example_mask"].astype(jnp.int32))
    query = self.query_proj(batch["query_feats"], train=train)
    streams = []
    if cfg.use_visual:
      streams.append(
          (
              self.video_proj(batch["video_feats"], train=train),
              query,
              batch["query_mask"],
              self.visual_vqf,
          )
      )
    if cfg.use_caption_context:
      caption_query = self.caption_query_proj(batch["caption_query_feats"], train=train)
      streams.append(
          (
              self.caption_proj(batch["caption_feats"], train=train),
              caption_query,
              batch["caption_query_mask"],
              self.caption_vqf,
          )
      )

    outputs = {}
    if with_negatives:
      # Each video paired with the next query of the batch goes through VQF and the encoder in the
      # same pass as the real pairs, reusing the projections (QD-DETR runs a second pass).
      roll = lambda x: jnp.roll(x, -1, axis=0)  # noqa: E731
      both = lambda x: jnp.concatenate([x, x])  # noqa: E731
      streams = [
          (both(c), jnp.concatenate([q, roll(q)]), jnp.concatenate([m, roll(m)]), vqf)
          for c, q, m, vqf in streams
      ]
      memory, memory_mask, memory_pos, saliency = self.encode(
          streams,
          both(video_mask),
          train=train,
          group_size=group_size,
          mix_t2v_masks=mix_t2v_masks,
      )
      memory, memory_mask, memory_pos = (
          memory[:batch_size],
          memory_mask[:batch_size],
          memory_pos[:batch_size],
      )
      saliency, outputs["saliency_neg"] = saliency[:batch_size], saliency[batch_size:]
    else:
      memory, memory_mask, memory_pos, saliency = self.encode(
          streams, video_mask, train=train, group_size=group_size, mix_t2v_masks=mix_t2v_masks
      )
    outputs["saliency"] = saliency  # (B, L)

    k, d = cfg.num_queries, cfg.hidden_dim
    if cfg.language_queries:
      # LMR's moment queries: the query sentence (its projected tokens, pooled) replicated K times.
      sentence_BxD = masked_mean(query, batch["query_mask"])
      tgt = jnp.broadcast_to(sentence_BxD[:, None], (batch_size, k, d))
    else:  # w/o LMQ: QD-DETR's content-free queries (zeros); only the anchors tell them apart
      tgt = jnp.zeros((batch_size, k, d), memory.dtype)
    anchors = jnp.broadcast_to(jax.nn.sigmoid(self.moment_anchors), (batch_size, k, 2))
    hidden, starts = self.decoder(tgt, anchors, memory, memory_pos, memory_mask, train=train)
    # Each layer predicts an offset from the anchor it started from (DAB-DETR).
    outputs["pred_spans"] = jax.nn.sigmoid(
        self.span_head(hidden).astype(jnp.float32) + ops.inverse_sigmoid(starts)
    )  # (layers, B, K, 2) center/width in [0, 1]
    outputs["pred_logits"] = self.class_head(hidden).astype(jnp.float32)  # (layers, B, K, 2)
    return outputs
