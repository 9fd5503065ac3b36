"""The LMR model (arXiv 2405.12540, Sec. III): VQF fusion, video context modeling, language-conditioned
decoder. One Flax module; every ablation switch of the config is a real code path here.

Data flow for a batch (B queries, L clips, T query tokens, D hidden):
  visual clips (BxLxDv) --proj--> VQF(query CLIP tokens) -----------\
  caption vectors (BxLxDc) --proj--> VQF(query caption tokens) ------+-> [sal; F̃v; F̃t] -> 2 self-attn -> F_m
  F_m --> saliency S_i = <W_s x_sal, W_v x_i>/sqrt(D) over video tokens
  pooled query sentence x k + k learned anchor spans --> 2 decoder layers over F_m --> (center, width), fg/bg
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lmr_jax.model import layers


def masked_mean(x_BxTxD, mask_BxT):
  weights = mask_BxT.astype(x_BxTxD.dtype)[..., None]
  return (x_BxTxD * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


class VideoQueryFusion(nn.Module):
  """VQF: context tokens (queries) attend to the query-language tokens (keys/values), then MLP,
  each with residual and LayerNorm."""

  num_heads: int
  ffn_dim: int
  dropout: float

  @nn.compact
  def __call__(self, context_BxLxD, context_mask_BxL, lang_BxTxD, lang_mask_BxT, *, train: bool):
    block = layers.AttentionBlock(self.num_heads, self.ffn_dim, self.dropout)
    return block(
        context_BxLxD,
        lang_BxTxD,
        layers.attention_mask(context_mask_BxL, lang_mask_BxT),
        train=train,
    )


class LMR(nn.Module):
  config: ml_collections.ConfigDict  # config.model

  def setup(self):
    cfg = self.config
    d = cfg.hidden_dim
    proj = lambda: layers.InputProjection(d, cfg.input_dropout, cfg.dropout)  # noqa: E731
    self.video_proj = proj()
    self.query_proj = proj()
    self.caption_proj = proj()
    # Caption vectors and the query's caption-encoder tokens live in one space (the same frozen LLM
    # embedding table), so one projection serves both and keeps their similarities comparable.
    self.caption_query_proj = self.caption_proj
    vqf = lambda: VideoQueryFusion(cfg.num_heads, cfg.ffn_dim, cfg.dropout)  # noqa: E731
    self.visual_vqf = vqf()
    # Weight sharing (paper's WS): the caption stream reuses the visual VQF module itself.
    self.caption_vqf = self.visual_vqf if cfg.share_vqf else vqf()
    self.type_embed = self.param("type_embed", nn.initializers.normal(0.02), (2, d))
    self.saliency_token = self.param("saliency_token", nn.initializers.normal(0.02), (d,))
    self.encoder = [
        layers.AttentionBlock(cfg.num_heads, cfg.ffn_dim, cfg.dropout)
        for _ in range(cfg.num_encoder_layers)
    ]
    self.saliency_query_proj = nn.Dense(d)
    self.saliency_clip_proj = nn.Dense(d)
    self.sentence_proj = nn.Dense(d)
    # The learned positional parameters of the k moment queries are anchor spans (center, width),
    # refined layer by layer as in QD-DETR's DAB-DETR-style decoder; they are stored pre-sigmoid.
    self.moment_anchors = self.param(
        "moment_anchors", nn.initializers.normal(1.0), (cfg.num_queries, 2)
    )
    self.anchor_pos = layers.MLP(d, d, 2)
    if not cfg.language_queries:
      self.learned_queries = self.param(
          "learned_queries", nn.initializers.normal(1.0), (cfg.num_queries, d)
      )
    # A DETR decoder layer: self-attention, cross-attention, one feed-forward.
    self.decoder = [
        layers.AttentionBlock(
            cfg.num_heads, cfg.ffn_dim, cfg.dropout, with_ffn=False, name=f"dec_self_{i}"
        )
        for i in range(cfg.num_decoder_layers)
    ]
    self.decoder_cross = [
        layers.AttentionBlock(cfg.num_heads, cfg.ffn_dim, cfg.dropout, name=f"dec_cross_{i}")
        for i in range(cfg.num_decoder_layers)
    ]
    self.decoder_norm = nn.LayerNorm()
    self.span_head = layers.MLP(d, 2, 3)
    self.class_head = nn.Dense(2)  # 0: moment (foreground), 1: background

  def encode(self, streams, video_mask_BxL, *, train: bool):
    """VQF + video context modeling over ``streams`` = [(context_BxLxD, lang_BxTxD, lang_mask_BxT,
    vqf, type_id)]; returns (F_m without the saliency token, its mask, saliency_BxL).

    As in DETR, the clip positions are added to queries and keys of every attention layer (a clip and its
    caption share one position), not mixed into the content.
    """
    cfg = self.config
    batch_size, num_clips = video_mask_BxL.shape
    clip_positions = jnp.asarray(layers.sinusoidal_positions(num_clips, cfg.hidden_dim))
    tokens = []
    for context, lang, lang_mask, vqf, type_id in streams:
      if cfg.use_vqf:
        context = vqf(context, video_mask_BxL, lang, lang_mask, train=train)
      tokens.append(context + self.type_embed[type_id])
    sal = jnp.broadcast_to(self.saliency_token, (batch_size, 1, cfg.hidden_dim))
    x = jnp.concatenate([sal] + tokens, axis=1)
    positions = jnp.concatenate([jnp.zeros((1, cfg.hidden_dim))] + [clip_positions] * len(tokens))
    mask = jnp.concatenate(
        [jnp.ones((batch_size, 1), bool)] + [video_mask_BxL] * len(tokens), axis=1
    )
    attn_mask = layers.attention_mask(mask, mask)
    for block in self.encoder:
      x = block(x, x, attn_mask, train=train, pos_q=positions, pos_k=positions)
    sal_token, memory = x[:, 0], x[:, 1:]
    # A clip's token for saliency sums its streams' tokens (visual and caption), so the clip's
    # caption speaks for it directly, not only through attention.
    clips = sum(memory[:, i * num_clips : (i + 1) * num_clips] for i in range(len(tokens)))
    saliency = jnp.einsum(
        "bd,bld->bl", self.saliency_query_proj(sal_token), self.saliency_clip_proj(clips)
    ) / jnp.sqrt(cfg.hidden_dim)
    return memory, mask[:, 1:], positions[1:], saliency

  def __call__(self, batch, *, train: bool):
    """Outputs per decoder layer; in training (batch > 1) also the saliency of each video paired with
    another query of the batch ("saliency_neg"), which only the losses need."""
    cfg = self.config
    video_mask = batch["video_mask"]
    query = self.query_proj(batch["query_feats"], train=train)
    streams = []
    if cfg.use_visual:
      streams.append(
          (
              self.video_proj(batch["video_feats"], train=train),
              query,
              batch["query_mask"],
              self.visual_vqf,
              0,
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
              1,
          )
      )

    batch_size = video_mask.shape[0]
    outputs = {}
    if train and batch_size > 1:
      # Inter-video negatives (QD-DETR): each video paired with the next query of the batch. The
      # pairs go through the encoder in one pass with the real ones, reusing the projections.
      roll = lambda x: jnp.roll(x, 1, axis=0)  # noqa: E731
      streams = [
          (
              jnp.concatenate([c, c]),
              jnp.concatenate([q, roll(q)]),
              jnp.concatenate([m, roll(m)]),
              vqf,
              t,
          )
          for c, q, m, vqf, t in streams
      ]
      memory, memory_mask, memory_positions, saliency = self.encode(
          streams, jnp.concatenate([video_mask, video_mask]), train=train
      )
      memory, memory_mask = memory[:batch_size], memory_mask[:batch_size]
      saliency, outputs["saliency_neg"] = saliency[:batch_size], saliency[batch_size:]
    else:
      memory, memory_mask, memory_positions, saliency = self.encode(
          streams, video_mask, train=train
      )
    outputs["saliency"] = saliency  # (B, L)

    batch_size = memory.shape[0]
    if cfg.language_queries:
      sentence = self.sentence_proj(masked_mean(query, batch["query_mask"]))
      tgt = jnp.broadcast_to(sentence[:, None], (batch_size, cfg.num_queries, cfg.hidden_dim))
    else:
      tgt = jnp.broadcast_to(self.learned_queries, (batch_size,) + self.learned_queries.shape)
    query_mask = jnp.ones((batch_size, cfg.num_queries), bool)
    self_mask = layers.attention_mask(query_mask, query_mask)
    cross_mask = layers.attention_mask(query_mask, memory_mask)
    reference = jnp.broadcast_to(
        jax.nn.sigmoid(self.moment_anchors), (batch_size, cfg.num_queries, 2)
    )
    hidden, spans = [], []
    for self_block, cross_block in zip(self.decoder, self.decoder_cross):
      pos = self.anchor_pos(layers.sine_embed_spans(reference, cfg.hidden_dim))
      tgt = self_block(tgt, tgt, self_mask, train=train, pos_q=pos, pos_k=pos)
      tgt = cross_block(tgt, memory, cross_mask, train=train, pos_q=pos, pos_k=memory_positions)
      hidden.append(self.decoder_norm(tgt))
      # Each layer predicts an offset from its reference span; the next layer starts from the
      # result, without a gradient through the reference (DAB-DETR).
      spans.append(jax.nn.sigmoid(self.span_head(hidden[-1]) + layers.inverse_sigmoid(reference)))
      reference = jax.lax.stop_gradient(spans[-1])
    outputs["pred_spans"] = jnp.stack(spans)  # (layers, B, k, 2) center/width in [0, 1]
    outputs["pred_logits"] = self.class_head(jnp.stack(hidden))  # (layers, B, k, 2)
    return outputs
