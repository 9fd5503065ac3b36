"""Compile times of the tiny test model (init, evaluation forward, training forward, whole train step:
forward, matcher, losses, gradients, Adam) on one device of this machine:
what docs/testing.md quotes for the test session's XLA flags (tests/conftest.py).

  python tests/compile_times.py                                  # XLA's defaults
  XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false \
      --xla_cpu_parallel_codegen_split_count=1" python tests/compile_times.py   # the tests' setting
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

_XLA_FLAGS = os.environ.get("XLA_FLAGS")
import conftest  # noqa: E402 - the tiny data and config of the tests
from lmr_jax.data import dataset, pipeline, synthetic  # noqa: E402
from lmr_jax.model.lmr import LMR  # noqa: E402
from lmr_jax.training import train_step as train_step_lib  # noqa: E402

# conftest sets the tests' XLA flag and compilation cache: measure with the caller's flags, uncached.
if _XLA_FLAGS is None:
  os.environ.pop("XLA_FLAGS", None)
else:
  os.environ["XLA_FLAGS"] = _XLA_FLAGS
jax.config.update("jax_enable_compilation_cache", False)


def _compile_seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def main() -> None:
  with tempfile.TemporaryDirectory() as root:
    synthetic.generate(conftest.TINY_SYNTHETIC, root)
    config = conftest.tiny_config(root)
    source = dataset.example_source(config.data, "val", with_captions=True, training=False)
    batch = {k: np.stack([source.example(i)[k] for i in range(4)]) for k in source.example(0)}
    train_source = dataset.example_source(config.data, "train", with_captions=True, training=True)
    train_batch = dict(next(pipeline.train_batches(train_source, 4, seed=0)).arrays)
  model = LMR(config.model)
  init = lambda b: model.init(jax.random.key(0), b, train=False)  # noqa: E731
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"init              {_compile_seconds(init, batch):5.1f} s")
  params = jax.jit(init)(batch)
  evaluate = lambda p, b: model.apply(p, b, train=False)  # noqa: E731
  print(f"evaluation apply  {_compile_seconds(evaluate, params, batch):5.1f} s")
  train = lambda p, b, k: model.apply(p, b, train=True, rngs={"dropout": k})  # noqa: E731
  print(f"training apply    {_compile_seconds(train, params, batch, jax.random.key(1)):5.1f} s")
  tx, _ = train_step_lib.make_optimizer(config.optim, 100)
  state = train_step_lib.TrainState(
      step=np.zeros((), np.int32), params=params["params"], opt_state=tx.init(params["params"])
  )
  step = lambda s, b, k: train_step_lib.train_step(  # noqa: E731
      s, b, k, model=model, tx=tx, loss_cfg=config.loss
  )
  seconds = _compile_seconds(step, state, train_batch, jax.random.key(1))
  print(f"train step        {seconds:5.1f} s")


if __name__ == "__main__":
  main()
