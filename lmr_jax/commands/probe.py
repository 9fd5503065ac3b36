"""Where a trained model's video tokens look among the caption tokens: the caption-routing probe.

  python -m lmr_jax.commands.probe --workdir workdir/synthetic --split val

For every labelled query of the split, the self-attention layers of the video context modeling are
read (``visualization.attention.encoder_attention``) and, for the video tokens of the query's target
clips, the attention they give to the caption tokens of their own event, of the look-alike events
(the windows of the video's other queries), of their own clip and of all clips is averaged
(``caption_routing``). Eq. 5 scores the video tokens only, so on the synthetic benchmark, whose
visual features do not tell the scenes apart, a model uses the captions for its saliency only if
these tokens route to their own event's captions. Prints a table per layer and writes
``caption_routing.json`` to ``--output_dir`` (default ``{workdir}/eval/{split}_{checkpoint}``).
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Sequence

from lmr_jax import cli

if __name__ == "__main__":  # run as a command: quiet before TensorFlow and JAX are imported; as a
  cli.quiet_native_logs()  # library module, importing it changes no environment variable

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from lmr_jax import fileio  # noqa: E402
from lmr_jax.data import dataset  # noqa: E402
from lmr_jax.errors import ConfigError  # noqa: E402
from lmr_jax.training import checkpoint as checkpoint_lib  # noqa: E402
from lmr_jax.training import parallel  # noqa: E402
from lmr_jax.training import state as state_lib  # noqa: E402
from lmr_jax.visualization import attention  # noqa: E402

OUTPUT_NAME = "caption_routing.json"


def probe(workdir: str, checkpoint: str = "best", split: str | None = None, num_queries: int = 0):
  """{layer index: {ROUTING_KEYS: mean over queries}, "num_queries": n, "step": step} for the
  model in ``workdir`` on ``split`` (default: its eval split); ``num_queries`` > 0 reads only the
  first that many queries with look-alikes."""
  config = checkpoint_lib.load_config(workdir)
  if not (config.model.use_visual and config.model.use_caption_context):
    raise ConfigError(
        f"{workdir}: the probe needs a model with both the visual and the caption stream "
        f"(config.model.use_visual={config.model.use_visual}, "
        f"use_caption_context={config.model.use_caption_context})"
    )
  split = split or config.eval_split
  checkpointer = state_lib.open_checkpointer(config, workdir, checkpoint)
  try:
    source = dataset.example_source(config.data, split, with_captions=True, training=False)
    model = state_lib.build_model(config)
    params, step = state_lib.restore_params(
        config,
        model,
        checkpointer,
        checkpoint,
        element_spec=source.element_spec(),
        mesh=parallel.make_mesh(1),
    )
  finally:
    checkpointer.close()
  windows_by_vid = collections.defaultdict(list)
  for ann in source.annotations:
    windows_by_vid[ann.vid].append((ann.qid, ann.windows))
  chosen = [
      i
      for i, ann in enumerate(source.annotations)
      if ann.has_labels and any(qid != ann.qid for qid, _ in windows_by_vid[ann.vid])
  ]
  if num_queries > 0:
    chosen = chosen[:num_queries]
  if not chosen:
    raise ConfigError(f"split '{split}' has no labelled query whose video has another query")
  batch_size = min(len(chosen), config.eval_batch_size)
  weights = attention.encoder_attention(model, params, source, chosen, batch_size=batch_size)
  per_layer = collections.defaultdict(list)
  for index, layers_weights in zip(chosen, weights):
    ann = source.annotations[index]
    others = [w for qid, ws in windows_by_vid[ann.vid] if qid != ann.qid for w in ws]
    num_clips = (layers_weights[0].shape[0] - 1) // 2
    for layer, w in enumerate(layers_weights):
      stats = attention.caption_routing(
          w,
          num_clips,
          target_windows=ann.windows,
          other_windows=others,
          clip_len=config.data.clip_len,
      )
      if stats is not None:
        per_layer[layer].append(stats)
  result = {"step": step, "split": split, "num_queries": len(per_layer[0])}
  for layer, rows in sorted(per_layer.items()):
    result[f"layer_{layer}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  return result


def format_table(result: dict) -> str:
  keys = attention.ROUTING_KEYS
  lines = [
      f"caption routing of the target clips' video tokens, {result['split']} "
      f"({result['num_queries']} queries), step {result['step']}",
      "| layer | " + " | ".join(keys) + " | own / look-alike per clip |",
      "|---" * (len(keys) + 2) + "|",
  ]
  for name, row in result.items():
    if name.startswith("layer_"):
      ratio = row["own_event_per_clip"] / max(row["look_alikes_per_clip"], 1e-12)
      cells = " | ".join(f"{row[k]:.4f}" for k in keys)
      lines.append(f"| {name[6:]} | {cells} | {ratio:.2f} |")
  return "\n".join(lines) + "\n"


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "workdir",
      None,
      "a train.py workdir (config.json, checkpoints)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_string(
      "checkpoint", "best", "'best', 'latest' or a step number", flag_values=flag_values
  )
  flags.DEFINE_string(
      "split",
      None,
      "a split of the run's annotation files (default: its eval split)",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "num_queries", 0, "read only this many queries (0: all)", flag_values=flag_values
  )
  flags.DEFINE_string(
      "output_dir", None, "default: {workdir}/eval/{split}_{checkpoint}", flag_values=flag_values
  )


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run_command(_define_flags, _run, __doc__, argv)


def _run(args) -> None:
  split = args.split or checkpoint_lib.load_config(args.workdir).eval_split
  output_dir = args.output_dir or os.path.join(args.workdir, "eval", f"{split}_{args.checkpoint}")
  fileio.check_output_dir(output_dir, [], [OUTPUT_NAME])
  result = probe(args.workdir, args.checkpoint, split, args.num_queries)
  fileio.write_json(os.path.join(output_dir, OUTPUT_NAME), result)
  print(format_table(result), end="")
  print(f"wrote {os.path.join(output_dir, OUTPUT_NAME)}")


if __name__ == "__main__":
  sys.exit(main())
