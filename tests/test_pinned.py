"""Pinned numbers for LMR's own path: captions, language queries and inter-video negatives all on.

One train step of the tiny config (one layer per stack, input dropout with a fixed key) on the first
training batch of the tiny synthetic data: every loss term, the gradient norm, and the saliency of the
stepped model in evaluation mode. Other tests check that each piece works; this one notices when any of
them gives other numbers, e.g. a changed caption-stream weight or the two context streams swapped.

When a change is meant to move these numbers, rerun with LMR_UPDATE_PINNED=1 to rewrite
tests/fixtures/pinned_lmr_path.json, and say in the change why they moved.
"""

import json
import os

import jax
import numpy as np

from conftest import FIXTURES, tiny_config, train_on_one_batch

PINNED = os.path.join(FIXTURES, "pinned_lmr_path.json")
UPDATE_ENV = "LMR_UPDATE_PINNED"
# Float32 on XLA:CPU is deterministic for one build; the tolerance leaves room for another CPU's
# vector width changing summation order, far below what a changed weight or stream order moves.
RTOL, ATOL = 1e-4, 1e-6
SALIENCY_ROWS, SALIENCY_CLIPS = 2, 8


def _difference(name: str, got: np.ndarray, pinned: np.ndarray) -> str:
  if got.ndim == 0:
    return f"{name} {float(got):.7g} (pinned {float(pinned):.7g})"
  index = np.unravel_index(np.argmax(np.abs(got - pinned)), got.shape)
  return f"{name}{list(index)} {got[index]:.7g} (pinned {pinned[index]:.7g}), the largest change"


def test_loss_terms_gradient_norm_and_saliency_are_pinned(tiny_data_root):
  from lmr_jax.training import state as state_lib  # noqa: PLC0415 - after conftest's JAX settings

  config = tiny_config(tiny_data_root)
  assert config.model.use_caption_context and config.model.language_queries
  assert config.model.use_vqf and config.loss.saliency_inter_video > 0 and config.batch_size > 1
  state, step_metrics, batch, _ = train_on_one_batch(config, steps=1)
  model = state_lib.build_model(config)
  outputs = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(state.params, batch)
  got = dict(sorted(step_metrics[0].items()))
  got["saliency"] = np.asarray(outputs["saliency"])[:SALIENCY_ROWS, :SALIENCY_CLIPS].tolist()

  if os.environ.get(UPDATE_ENV):
    with open(PINNED, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
      f.write("\n")
  with open(PINNED) as f:
    pinned = json.load(f)
  how = (
      f"if the change is meant to move LMR's numbers, rerun with {UPDATE_ENV}=1 to rewrite "
      f"{os.path.relpath(PINNED)} and say why in the change"
  )
  assert sorted(got) == sorted(pinned), f"other metrics than pinned: {sorted(got)}; {how}"
  moved = [
      _difference(name, np.asarray(got[name]), np.asarray(pinned[name]))
      for name in pinned
      if not np.allclose(got[name], pinned[name], rtol=RTOL, atol=ATOL)
  ]
  assert not moved, f"{len(moved)} pinned numbers moved: {'; '.join(moved)}; {how}"
