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
    model, params, source, indices: Sequence[int], batch_size: int
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
