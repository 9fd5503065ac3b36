r"""CLI: caption every 2 s clip of every video with a frozen multimodal LLM (LMR Video Context Enhancement).

    python -m preprocess.captions --videos DIR --model llava-hf/LLaVA-NeXT-Video-7B-hf --out FEAT_ROOT \
        [--annotations train.jsonl val.jsonl ...] [--shard I --num_shards N]

Writes FEAT_ROOT/captions/{vid}.json: {"vid", "model", "seed", "clip_len", "frames_per_clip", "captions",
"instructions"}, one caption per clip in chronological order with the Table I instruction it answered.
`python -m preprocess.text_features --llama ...` turns these into caption_features/{vid}.npz.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from preprocess import io_utils, runtime
from preprocess.captioners import Captioner
from preprocess.instructions import sample_instructions
from preprocess.video_io import ClipReader, select_videos

logger = logging.getLogger("preprocess.captions")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m preprocess.captions",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      "--videos", required=True, type=Path, help="directory of {vid}.mp4 (or .mkv, .webm, ...)"
  )
  p.add_argument(
      "--annotations", nargs="*", default=[], help="jsonl files; if given, caption only their vids"
  )
  p.add_argument("--model", required=True, help="captioner checkpoint (hub id or directory)")
  p.add_argument("--clip_len", type=float, default=2.0, help="seconds per clip")
  p.add_argument("--frames_per_clip", type=int, default=8, help="frames a video LLM sees per clip")
  p.add_argument("--batch_size", type=int, default=8, help="clips per generate() call")
  p.add_argument(
      "--max_new_tokens", type=int, default=64, help="longest caption, in generated tokens"
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the per-video instruction draw")
  io_utils.add_run_args(p)
  runtime.add_device_args(p, half_on_gpu=True)
  return p.parse_args(argv)


def caption_video(
    captioner: Captioner,
    path: Path,
    vid: str,
    args: argparse.Namespace,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
  """Captions and instructions for every clip of one video, in clip order; ``on_progress(done,
  total)`` is called with the clips captioned so far after each batch (the demo's progress bar)."""
  with ClipReader(path, args.clip_len, captioner.frames_per_clip) as clips:
    instructions = sample_instructions(args.seed, vid, clips.num_clips)
    captions: list[str] = []
    for batch in io_utils.batched(clips, args.batch_size):
      captions += captioner.caption(batch, instructions[len(captions) : len(captions) + len(batch)])
      if on_progress is not None:
        on_progress(len(captions), clips.num_clips)
  return {
      "vid": vid,
      "model": args.model,
      "seed": args.seed,
      "clip_len": args.clip_len,
      "frames_per_clip": captioner.frames_per_clip,
      "captions": captions,
      "instructions": instructions,
  }


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  io_utils.setup_logging(args.log_level)
  videos = select_videos(args.videos, args.annotations)
  vids = io_utils.shard_keys(videos, args.shard, args.num_shards)
  logger.info("shard %d/%d: %d of %d videos", args.shard, args.num_shards, len(vids), len(videos))
  device, dtype = runtime.resolve(args)

  def out_path(vid: str) -> Path:
    return args.out / "captions" / f"{vid}.json"

  def load() -> Captioner:
    return Captioner(
        args.model, device, dtype, args.max_new_tokens, frames_per_clip=args.frames_per_clip
    )

  def work(vid: str, captioner: Captioner) -> None:
    if videos[vid] is None:
      raise FileNotFoundError(f"no video file for {vid} in {args.videos}")
    io_utils.save_json(out_path(vid), caption_video(captioner, videos[vid], vid, args))

  report = io_utils.run_keys("captions", vids, out_path, load, work=work, logger=logger)
  return io_utils.summarize([report], logger)


if __name__ == "__main__":
  sys.exit(main())
