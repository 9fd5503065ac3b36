"""The VQF cross-attention weights (paper Fig. 5): the model run once more with its sown weights.

Every ``layers.Attend`` sows its weights into the ``intermediates`` collection, which only an apply
with ``mutable=["intermediates"]`` keeps; predictions and training never pay for it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
from flax import traverse_util


from lmr_jax.data import examples as examples_lib

# Each stream's query tokens: the CLIP text tokens for the visual VQF, the caption-encoder tokens for
# the caption VQF.
TOKEN_MASKS = {"visual": "query_mask", "caption": "caption_query_mask"}


def stream_names(model_config) -> list[str]:
  """The VQF streams in the order the model runs them (the order their weights are sown in)."""
  on = {"visual": model_config.use_visual, "caption": model_config.use_caption_context}
  return [name for name in TOKEN_MASKS if on[name]]


def _apply_with_weights(params, batch, *, model) -> dict:
  _, state = model.apply({"params": params}, batch, train=False, mutable=["intermediates"])
  # With shared VQF weights both streams sow into visual_vqf, visual first; otherwise each into its
  # own module. Either way visual_vqf then caption_vqf lists them in stream order. The figure shows
  # the last of the VQF's T2V layers, whose output enters the context modeling.
  last = f"layers_{model.config.num_vqf_layers - 1}"
  sown = []
  for module in ("visual_vqf", "caption_vqf"):
    for path, weights in traverse_util.flatten_dict(state["intermediates"].get(module, {})).items():
      if path[0] == last and path[-1] == "attention_weights":
        sown += [w.mean(axis=1) for w in weights]  # (B, heads, clips, tokens) -> mean over heads
  names = stream_names(model.config) if sown else []  # no VQF (use_vqf=False): nothing sown
  assert len(sown) == len(names), f"{len(sown)} VQF attention maps for streams {names}"
  return dict(zip(names, sown))


def vqf_attention(
    model, params, source, indices: Sequence[int], *, batch_size: int
) -> list[dict[str, np.ndarray]]:
  """For each query ``source.example(i)``, i in ``indices``: {stream: (clips, tokens) weights, mean over
  heads, cropped to the real clips and tokens; a row sums to 1}. Empty dicts when the model has no VQF.

  Batches are padded to ``batch_size`` (repeating their first query) so that one compile serves all.
  """
  fn = jax.jit(functools.partial(_apply_with_weights, model=model))
  results = []
  for start in range(0, len(indices), batch_size):
    chunk = list(indices[start : start + batch_size])
    examples = [source.example(i) for i in chunk]
    # A dict in key order; the figures want stream order.
    weights = jax.device_get(fn(params, examples_lib.stack_examples(examples, batch_size)))
    weights = {name: weights[name] for name in stream_names(model.config) if name in weights}
    for row, example in enumerate(examples):
      num_clips = int(example["video_mask"].sum())
      results.append(
          {
              name: np.asarray(w[row, :num_clips, : int(example[TOKEN_MASKS[name]].sum())])
              for name, w in weights.items()
          }
      )
  return results


def _apply_with_encoder_weights(params, batch, *, model) -> list:
  _, state = model.apply({"params": params}, batch, train=False, mutable=["intermediates"])
  sown = state["intermediates"]
  return [
      sown[f"encoder_{i}"]["self_attn"]["attend"]["attention_weights"][0].mean(axis=1)
      for i in range(model.config.num_encoder_layers)
  ]  # per layer (B, tokens, tokens), mean over heads


def encoder_attention(
    model, params, source, indices: Sequence[int], *, batch_size: int
) -> list[list[np.ndarray]]:
  """For each query ``source.example(i)``, i in ``indices``: per self-attention layer of the video
  context modeling, the (tokens, tokens) weights, mean over heads, over the real tokens only, in the
  model's order: [saliency token; the clips of each stream in ``stream_names`` order]. A row sums to
  1 (a token's attention over the real tokens). Batches are padded as in ``vqf_attention``."""
  fn = jax.jit(functools.partial(_apply_with_encoder_weights, model=model))
  num_streams = len(stream_names(model.config))
  results = []
  for start in range(0, len(indices), batch_size):
    chunk = list(indices[start : start + batch_size])
    examples = [source.example(i) for i in chunk]
    per_layer = jax.device_get(fn(params, examples_lib.stack_examples(examples, batch_size)))
    for row, example in enumerate(examples):
      max_clips = example["video_mask"].shape[0]
      num_clips = int(example["video_mask"].sum())
      keep = np.concatenate(
          [[0]] + [1 + s * max_clips + np.arange(num_clips) for s in range(num_streams)]
      )
      results.append([np.asarray(w[row][np.ix_(keep, keep)]) for w in per_layer])
  return results


def _clip_ranges(windows, clip_len: float, num_clips: int) -> list[range]:
  """Each window (seconds) as the clips it covers."""
  out = []
  for start, end in windows:
    first = int(np.floor(start / clip_len + 1e-6))
    last = min(int(np.ceil(end / clip_len - 1e-6)), num_clips)
    if last > first:
      out.append(range(first, last))
  return out


ROUTING_KEYS = (
    "own_event",
    "look_alikes",
    "own_clip",
    "all_captions",
    "own_event_per_clip",
    "look_alikes_per_clip",
)


def caption_routing(
    weights_NxN: np.ndarray, num_clips: int, *, target_windows, other_windows, clip_len: float
) -> dict[str, float] | None:
  """Where the target clips' video tokens look among the caption tokens, for one query and layer.

  ``weights_NxN``: one layer of ``encoder_attention`` for a model with both streams ([sal; L video;
  L caption]). ``target_windows``: the query's windows; ``other_windows``: windows of the video's
  other queries (on the synthetic benchmark, the look-alike events: same actor and action, another
  scene), seconds. Means over the target clips of the attention a video token gives to the caption
  tokens of its own event (the window it lies in), of the look-alike events (the other windows,
  clips of the query's windows left out), of its own clip, and of all clips; ``*_per_clip`` divide
  the event masses by the events' lengths. None when the query has no look-alike window.
  """
  targets = _clip_ranges(target_windows, clip_len, num_clips)
  target_clips = {c for r in targets for c in r}
  look = sorted(
      {c for r in _clip_ranges(other_windows, clip_len, num_clips) for c in r} - target_clips
  )
  if not targets or not look:
    return None
  caption = lambda clips: 1 + num_clips + np.asarray(list(clips), int)  # noqa: E731
  rows = {key: [] for key in ROUTING_KEYS}
  for window in targets:
    for clip in window:
      row = weights_NxN[1 + clip]
      own, others = row[caption(window)].sum(), row[caption(look)].sum()
      rows["own_event"].append(own)
      rows["look_alikes"].append(others)
      rows["own_clip"].append(row[1 + num_clips + clip])
      rows["all_captions"].append(row[1 + num_clips :].sum())
      rows["own_event_per_clip"].append(own / len(window))
      rows["look_alikes_per_clip"].append(others / len(look))
  return {key: float(np.mean(values)) for key, values in rows.items()}
