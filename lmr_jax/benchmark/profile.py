"""The compiled train step traced with jax.profiler, its ops ranked by time with the model code they
compute."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_HLO_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"', re.M)


def profile_ops(compiled, state, batch, key, *, trace_dir: str, steps: int = 2, top: int = 25):
  """Traces ``steps`` calls of the compiled train step with jax.profiler and ranks its ops by time.

  Returns (state, rows): each row is (ms per step, op, output shape, the jaxpr scope it computes:
  Flax module path and primitive, "transpose(jvp(...))" for the backward pass). The scope comes from
  the compiled HLO's metadata; ops the trace names differently (another backend) keep an empty one.
  Times are summed over the runtime's threads.
  """
  import jax.profiler  # noqa: PLC0415 - only the profiling run needs it (binds jax too)

  jax.block_until_ready(state)
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready((state, metrics))
  jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))
  with gzip.open(traces[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  scopes = {m[1]: (m[2], m[3]) for m in _HLO_OP.finditer(compiled.as_text())}
  micros = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in scopes:
      micros[event["name"]] += event.get("dur", 0)
  rows = []
  for name, total in micros.most_common(top):
    shape, scope = scopes[name]
    rows.append((total / 1e3 / steps, name, shape, scope.replace("jit(train_step)/", "")))
  return state, rows


def format_profile(rows) -> str:
  lines = ["| ms/step | op | shape | computes |", "|---|---|---|---|"]
  lines += [f"| {ms:.1f} | {op} | {shape} | {scope} |" for ms, op, shape, scope in rows]
  return "\n".join(lines)
