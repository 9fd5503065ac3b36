"""Compile times of the tiny test model (init, evaluation forward, training forward) on this machine:
what docs/testing.md quotes for the test session's XLA flag.

  python tests/compile_times.py                                                # XLA's default -O2
  XLA_FLAGS=--xla_backend_optimization_level=0 python tests/compile_times.py   # the tests' setting
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
from lmr_jax.data import dataset, synthetic  # noqa: E402
from lmr_jax.model.lmr import LMR  # noqa: E402

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
  model = LMR(config.model)
  init = lambda b: model.init(jax.random.key(0), b, train=False)  # noqa: E731
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"init              {_compile_seconds(init, batch):5.1f} s")
  params = jax.jit(init)(batch)
  evaluate = lambda p, b: model.apply(p, b, train=False)  # noqa: E731
  print(f"evaluation apply  {_compile_seconds(evaluate, params, batch):5.1f} s")
  train = lambda p, b, k: model.apply(p, b, train=True, rngs={"dropout": k})  # noqa: E731
  print(f"training apply    {_compile_seconds(train, params, batch, jax.random.key(1)):5.1f} s")


if __name__ == "__main__":
  main()
