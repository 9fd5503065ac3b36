"""LMR's training objective: DETR-style set losses on moments plus QD-DETR's saliency losses.

All functions are pure jnp over a whole batch and work under jit; nothing here knows about devices or
pmap axes (the batch mean is an ordinary mean, so sharding it over a mesh is XLA's business).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from lmr_jax.losses import matcher, span_ops

FOREGROUND = 0


def _safe_mean(total, count):
  return total / jnp.maximum(count, 1.0)


def matching_cost(
    pred_spans_BxKx2, pred_logits_BxKx2, windows_BxWx2, cfg: ml_collections.ConfigDict
):
  """DETR matching cost per (prediction, window): weighted L1 (cxw) - gIoU - p(foreground)."""
  target_cxw = span_ops.se_to_cxw(windows_BxWx2)
  l1 = jnp.abs(pred_spans_BxKx2[:, :, None, :] - target_cxw[:, None, :, :]).sum(-1)
  giou = jax.vmap(span_ops.pairwise_generalized_iou)(
      span_ops.cxw_to_se(pred_spans_BxKx2), windows_BxWx2
  )
  prob_fg = jax.nn.softmax(pred_logits_BxKx2, axis=-1)[..., FOREGROUND]
  return cfg.span_l1 * l1 - cfg.span_giou * giou - cfg.label * prob_fg[:, :, None]


def moment_losses(
    pred_spans_BxKx2,
    pred_logits_BxKx2,
    windows_BxWx2,
    window_mask_BxW,
    *,
    example_mask_B,
    cfg: ml_collections.ConfigDict,
) -> dict[str, jnp.ndarray]:
  """Hungarian-matched L1 + gIoU on spans and weighted fg/bg cross-entropy, for one decoder layer."""
  cost = matching_cost(pred_spans_BxKx2, pred_logits_BxKx2, windows_BxWx2, cfg)
  pred_idx_BxW, valid_BxW = matcher.batched_match(cost, window_mask_BxW)
  valid_BxW = valid_BxW & example_mask_B[:, None]
  matched_BxWx2 = jnp.take_along_axis(pred_spans_BxKx2, pred_idx_BxW[..., None], axis=1)
  target_cxw = span_ops.se_to_cxw(windows_BxWx2)
  num_windows = valid_BxW.sum()
  l1_BxW = jnp.abs(matched_BxWx2 - target_cxw).mean(-1)
  giou_BxW = jax.vmap(
      jax.vmap(lambda a, b: span_ops.pairwise_generalized_iou(a[None], b[None])[0, 0])
  )(span_ops.cxw_to_se(matched_BxWx2), windows_BxWx2)

  num_queries = pred_logits_BxKx2.shape[1]
  is_fg_BxK = jnp.zeros(pred_idx_BxW.shape[:1] + (num_queries,), bool)
  is_fg_BxK = jax.vmap(lambda row, idx, ok: row.at[idx].max(ok))(is_fg_BxK, pred_idx_BxW, valid_BxW)
  log_probs = jax.nn.log_softmax(pred_logits_BxKx2, axis=-1)
  nll_BxK = -jnp.where(is_fg_BxK, log_probs[..., FOREGROUND], log_probs[..., 1 - FOREGROUND])
  weight_BxK = jnp.where(is_fg_BxK, 1.0, cfg.background_weight) * example_mask_B[:, None]
  # QD-DETR (and DETR's 1-D ports) average the class-weighted CE over all B x K queries, not over the
  # sum of class weights as torch's weighted "mean" reduction would.
  num_queries_total = example_mask_B.sum() * num_queries
  return {
      "span_l1": _safe_mean((l1_BxW * valid_BxW).sum(), num_windows),
      "span_giou": _safe_mean(((1.0 - giou_BxW) * valid_BxW).sum(), num_windows),
      "label": _safe_mean((nll_BxK * weight_BxK).sum(), num_queries_total),
  }


def saliency_hinge_loss(saliency_BxL, pos_BxP, neg_BxP, example_mask_B, *, margin):
  """QD-DETR's margin ranking on sampled clip pairs: mean over pairs of relu(margin + S_neg - S_pos),
  times 2 (their "to keep the loss the same scale"). ``pos``/``neg`` index clips (data/examples.py).
  """
  pos = jnp.take_along_axis(saliency_BxL, pos_BxP, axis=1)
  neg = jnp.take_along_axis(saliency_BxL, neg_BxP, axis=1)
  hinge_BxP = jax.nn.relu(margin + neg - pos) * example_mask_B[:, None]
  return 2.0 * _safe_mean(hinge_BxP.sum(), example_mask_B.sum() * pos_BxP.shape[1])


def rank_contrastive_loss(
    saliency_BxL,
    saliency_neg_BxL,
    labels_BxL,
    video_mask_BxL,
    *,
    example_mask_B,
    temperature,
    num_levels: int = 12,
):
  """QD-DETR's rank-contrastive loss: for each level r in 1..num_levels-1, clips with label >= r are
  positives against every other clip of the video and (when given) every clip of the video paired with
  another query; the mean over levels divides by ``num_levels``, as QD-DETR's (11 levels, / 12)."""
  scores, labels, mask = saliency_BxL, labels_BxL, video_mask_BxL
  if saliency_neg_BxL is not None:
    scores = jnp.concatenate([scores, saliency_neg_BxL], axis=1)
    labels = jnp.concatenate([labels, jnp.zeros_like(labels_BxL)], axis=1)
    mask = jnp.concatenate([mask, video_mask_BxL], axis=1)
  logits = jnp.where(mask, scores / temperature, -1e9)
  logits = logits - logits.max(1, keepdims=True)
  # QD-DETR's epsilons (1e-6 in the log-sum and the positive count) are kept: outputs match to 1e-7.
  log_prob = logits - jnp.log(jnp.where(mask, jnp.exp(logits), 0.0).sum(1, keepdims=True) + 1e-6)
  log_prob = jnp.where(mask, log_prob, 0.0)
  total = 0.0
  for level in range(1, num_levels):
    positive = (labels >= level) & mask
    num_pos = positive.sum(1)
    mean_log_prob = (log_prob * positive).sum(1) / (num_pos + 1e-6)
    use = (num_pos > 0) & example_mask_B
    total += -(mean_log_prob * use).sum() / jnp.maximum(example_mask_B.sum(), 1)
  return total / num_levels


def inter_video_loss(saliency_neg_BxL, video_mask_BxL, example_mask_B):
  """-log(1 - sigmoid(S_neg)) summed over the clips of a video paired with another batch query."""
  per_clip = -jax.nn.log_sigmoid(-saliency_neg_BxL)  # = -log(1 - sigmoid(s)), stable
  per_video = (per_clip * video_mask_BxL).sum(1)
  return _safe_mean((per_video * example_mask_B).sum(), example_mask_B.sum())


def total_loss(outputs, batch, cfg: ml_collections.ConfigDict):
  """Weighted sum of every term; returns (loss, dict of unweighted terms for logging).

  Auxiliary decoder layers' terms are logged as "aux{layer}/{term}" and weighted like the last layer's.
  """
  weights = {
      "span_l1": cfg.span_l1,
      "span_giou": cfg.span_giou,
      "label": cfg.label,
      "saliency_hinge": cfg.saliency_hinge,
      "saliency_rank_contrastive": cfg.saliency_rank_contrastive,
      "saliency_inter_video": cfg.saliency_inter_video,
  }
  example_mask = batch["example_mask"]
  num_layers = outputs["pred_spans"].shape[0]
  loss, terms = 0.0, {}
  for layer in range(num_layers) if cfg.aux_layers else [num_layers - 1]:
    layer_terms = moment_losses(
        outputs["pred_spans"][layer],
        outputs["pred_logits"][layer],
        batch["windows"],
        batch["window_mask"],
        example_mask_B=example_mask,
        cfg=cfg,
    )
    prefix = "" if layer == num_layers - 1 else f"aux{layer}/"
    for name, value in layer_terms.items():
      loss += weights[name] * value
      terms[prefix + name] = value

  video_mask = batch["video_mask"]
  terms["saliency_hinge"] = saliency_hinge_loss(
      outputs["saliency"],
      batch["saliency_pos"],
      batch["saliency_neg"],
      example_mask,
      margin=cfg.saliency_margin,
  )
  saliency_neg = outputs.get("saliency_neg")  # absent for a batch of one: no other query to pair
  terms["saliency_rank_contrastive"] = rank_contrastive_loss(
      outputs["saliency"],
      saliency_neg,
      batch["saliency"],
      video_mask,
      example_mask_B=example_mask,
      temperature=cfg.rank_contrastive_temperature,
  )
  if saliency_neg is not None:
    terms["saliency_inter_video"] = inter_video_loss(saliency_neg, video_mask, example_mask)
  for name in ("saliency_hinge", "saliency_rank_contrastive", "saliency_inter_video"):
    if name in terms:
      loss += weights[name] * terms[name]
  return loss, terms
