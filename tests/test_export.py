"""The train step and the eval step lower, with ``jax.export``, for CPU, CUDA and TPU at the
QVHighlights shapes (configs/qvh.py, batch 32), without a device of either kind.

Only the CPU runs these steps in the tests; lowering for the other platforms is what keeps something
CPU-only (a LAPACK or host-callback custom call, a CPU-only primitive) from slipping into the model
unnoticed. Each platform is exported as it would run: the attention ``"auto"`` resolves to for it
(chunked on the CPU, one einsum on GPU/TPU) and its usual compute dtype (float32 on the CPU,
bfloat16 on GPU/TPU; float32 is exported for GPU/TPU too). The inputs are abstract
(``jax.ShapeDtypeStruct``): nothing is initialised or compiled.
"""

import collections
import functools
import os
import re

import jax
import numpy as np
import pytest

from configs import qvh
from lmr_jax.benchmark import inputs as benchmark_inputs
from lmr_jax.losses import matcher
from lmr_jax.model import ops
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

pytestmark = pytest.mark.slow  # lowers whole train and eval steps for three backends

PLATFORMS_AND_DTYPES = [
    ("cpu", "float32"),
    ("cuda", "bfloat16"),
    ("tpu", "bfloat16"),
    ("cuda", "float32"),
    ("tpu", "float32"),
]
# Custom calls that mean the same on every platform: XLA's sharding annotations. Anything else
# (lapack_*, cu*, host callbacks, ...) ties the module to one platform.
PORTABLE_CUSTOM_CALLS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})
MATCHER_SOURCE = os.path.abspath(matcher.__file__)

Exports = collections.namedtuple("Exports", "train eval num_state_leaves")


@functools.cache
def export_steps(platform: str, dtype: str) -> Exports:
  """The jitted train step (state donated) and eval step of configs/qvh.py, exported for
  ``platform`` with compute dtype ``dtype``."""
  config = qvh.get_config("").unlock()
  config.model.dtype = dtype
  # The model resolves "auto" from jax.default_backend() (the CPU here): resolve it for the target.
  config.model.attention = ops.resolve_attention(config.model.attention, platform)
  one_example = benchmark_inputs.random_batch(config, 1, np.random.default_rng(0))
  batch = {
      key: jax.ShapeDtypeStruct((config.batch_size,) + value.shape[1:], value.dtype)
      for key, value in one_example.items()
  }
  model = state_lib.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, total_steps=1000)
  state = jax.eval_shape(lambda batch: state_lib.init_state(config, model, tx, batch), batch)
  rng = jax.eval_shape(lambda: jax.random.key(1))  # a typed key, as training passes it
  export = functools.partial(jax.export.export, platforms=[platform])
  return Exports(
      train=export(train_step_lib.jit_train_step(model, tx, config.loss))(state, batch, rng),
      eval=export(train_step_lib.jit_eval_step(model))(state.params, batch),
      num_state_leaves=len(jax.tree.leaves(state)),
  )


def custom_call_targets(module_text: str) -> set[str]:
  return set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", module_text)) | set(
      re.findall(r'call_target_name = "([^"]+)"', module_text)
  )


def while_loop_sources(module_text: str) -> list[set[str]]:
  """For each ``stablehlo.while`` of the module, the Python files on its location's call stack."""
  locations = dict(re.findall(r"^#(loc\d+) = loc\((.*)\)$", module_text, re.MULTILINE))

  def files(location: str, seen: set[str]) -> set[str]:
    found = set(re.findall(r'"([^"]+\.py)":', location))
    for ref in set(re.findall(r"#(loc\d+)", location)) - seen:
      seen.add(ref)
      found |= files(locations[ref], seen)
    return found

  lines = module_text.splitlines()
  sources = []
  for i, line in enumerate(lines):
    if "stablehlo.while(" in line:
      # The op's location follows the closing brace of its last region, at the op's indentation.
      closing = line[: len(line) - len(line.lstrip())] + "} loc("
      end = next(later for later in lines[i + 1 :] if later.startswith(closing))
      sources.append(files(end, set()))
  return sources


def loops_outside_matcher(module_text: str) -> int:
  return sum(MATCHER_SOURCE not in files for files in while_loop_sources(module_text))


@pytest.mark.parametrize("platform,dtype", PLATFORMS_AND_DTYPES)
def test_train_step_lowers_with_portable_ops(platform, dtype):
  exports = export_steps(platform, dtype)
  module = exports.train.mlir_module()
  assert exports.train.platforms == (platform,)
  assert custom_call_targets(module) <= PORTABLE_CUSTOM_CALLS, custom_call_targets(module)
  # Every buffer of the train state is donated to its successor.
  assert module.count("tf.aliasing_output") == exports.num_state_leaves
  assert ("xbf16>" in module) == (dtype == "bfloat16")
  # The dropout masks are hashed from their element index in the step itself on every platform
  # (ops.keep_mask), never drawn as a bits array by the backend's generator.
  assert "stablehlo.rng_bit_generator" not in module and "stablehlo.iota" in module


@pytest.mark.parametrize("platform,dtype", PLATFORMS_AND_DTYPES)
def test_eval_step_lowers_with_portable_ops(platform, dtype):
  exported = export_steps(platform, dtype).eval
  module = exported.mlir_module()
  assert exported.platforms == (platform,)
  assert custom_call_targets(module) <= PORTABLE_CUSTOM_CALLS, custom_call_targets(module)
  assert ("xbf16>" in module) == (dtype == "bfloat16")
  reloaded = jax.export.deserialize(exported.serialize())
  assert reloaded.platforms == (platform,) and reloaded.in_avals == exported.in_avals


@pytest.mark.parametrize("platform,dtype", PLATFORMS_AND_DTYPES)
def test_only_the_matcher_loops_on_gpu_and_tpu(platform, dtype):
  """GPU/TPU run one batched attention einsum and unrolled threefry, so the Hungarian matcher's loops
  are the train step's only ones and the eval step has none. The CPU's chunked attention (lax.map)
  and its rolled threefry do loop: the check that loops outside the matcher are found at all."""
  exports = export_steps(platform, dtype)
  train_module, eval_module = exports.train.mlir_module(), exports.eval.mlir_module()
  assert any(MATCHER_SOURCE in files for files in while_loop_sources(train_module))
  if platform == "cpu":
    assert loops_outside_matcher(train_module) > 0 and loops_outside_matcher(eval_module) > 0
  else:
    assert loops_outside_matcher(train_module) == 0
    assert "stablehlo.while" not in eval_module
