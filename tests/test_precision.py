"""Mixed precision (config.model.dtype="bfloat16"): a bf16 run trains, its train state is float32, and
its checkpoint restores into the float32 model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config, train_on_one_batch
from lmr_jax.data.position import DataPosition
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

pytestmark = pytest.mark.slow  # trains in bfloat16 and restores in float32


def test_bfloat16_run_trains_and_restores_in_float32(tiny_data_root, tmp_path):
  config = tiny_config(tiny_data_root)
  config.model.dtype = "bfloat16"
  config.model.dropout = config.model.input_dropout = 0.0
  config.optim.learning_rate = 1e-3
  state, step_metrics, batch, source = train_on_one_batch(config, steps=8)
  losses = [m["loss"] for m in step_metrics]
  assert losses[-1] < 0.8 * losses[0], losses
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} <= {
      jnp.dtype(jnp.float32),
      jnp.dtype(jnp.int32),  # Adam's step count
  }

  workdir = str(tmp_path / "bf16")
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  checkpointer.save(state, DataPosition(0, 8))
  checkpointer.close()
  fp32 = config.copy_and_resolve_references()
  fp32.model.dtype = "float32"
  params, restored_step = state_lib.restore_on_one_device(
      fp32, workdir, "latest", source.element_spec()
  )
  assert restored_step == 8
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)
  outputs = {
      name: train_step_lib.jit_eval_step(state_lib.build_model(cfg))(params, batch)
      for name, cfg in (("bf16", config), ("fp32", fp32))
  }
  np.testing.assert_allclose(outputs["bf16"]["spans"], outputs["fp32"]["spans"], atol=0.02)
  np.testing.assert_allclose(outputs["bf16"]["saliency"], outputs["fp32"]["saliency"], atol=0.2)
