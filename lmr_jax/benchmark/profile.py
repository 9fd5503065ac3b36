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


def profile_ops(compiled, state, batch, key, *, trace_dir: str, steps: int = 2):
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
  for name, total in micros.most_common():
    shape, scope = scopes[name]
    rows.append((total / 1e3 / steps, name, shape, scope.replace("jit(train_step)/", "")))
  return state, rows


def format_profile(rows, top: int = 25) -> str:
  """The ``top`` slowest ops as a Markdown table."""
  lines = ["| ms/step | op | shape | computes |", "|---|---|---|---|"]
  lines += [f"| {ms:.1f} | {op} | {shape} | {scope} |" for ms, op, shape, scope in rows[:top]]
  return "\n".join(lines)


_PASS = re.compile(r"^(transpose\()?jvp\((\w+)\)\)?/")


def module_times(rows) -> list[tuple[str, str, float]]:
  """The ops' time per model part and pass, slowest first: (part, "forward" | "backward", ms/step).

  A part is the top-level Flax module an op computes (``caption_proj``, ``decoder``), one level deeper
  inside the encoder (``LMR.encode/encoder_0``), with the attention's core (logits, softmax,
  weighted sum: ``.../attend``) apart from its projections; ops outside any module keep their
  primitive's name. Comparing two configs' tables shows where one's extra time goes."""
  totals = collections.Counter()
  for ms, _, _, scope in rows:
    match = _PASS.match(scope)
    path = [p for p in scope[match.end() if match else 0 :].split("/") if p]
    depth = 2 if path and path[0].endswith(".encode") else 1
    part = "/".join(path[:depth]) or "(unnamed)"
    if "/attend/" in scope or scope.endswith("/attend"):
      part += "/attend"
    totals[(part, "backward" if match and match.group(1) else "forward")] += ms
  return [(part, direction, ms) for (part, direction), ms in totals.most_common()]


def format_module_times(rows, top: int = 25) -> str:
  """``module_times`` of the ops as a Markdown table, with the total op time (summed over threads)."""
  lines = ["| ms/step | model part | pass |", "|---|---|---|"]
  lines += [
      f"| {ms:.1f} | {part} | {direction} |" for part, direction, ms in module_times(rows)[:top]
  ]
  lines.append(f"| {sum(r[0] for r in rows):.1f} | all ops (summed over threads) | |")
  return "\n".join(lines)
