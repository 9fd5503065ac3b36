r"""CLI: text features of captions and queries.

    python -m preprocess.text_features --out FEAT_ROOT --annotations train.jsonl,val.jsonl,test.jsonl \
        [--llama meta-llama/Llama-2-7b-hf] [--clip openai/clip-vit-base-patch32] [--shard I --num_shards N]

With --llama (frozen embedding layer only, see llama_embedding.py):
  caption_features/{vid}.npz          "features" float32 (L, Dc): per clip, the mean token vector of its
                                      caption; "captions", "instructions" str (L,), from captions/{vid}.json
  caption_query_features/qid{q}.npz   "last_hidden_state" float32 (Lq, Dc): the query's token vectors
                                      (the caption VQF's query tokens; on Charades-STA, the paper's
                                      setting, the visual VQF's as well: configs/charades.py)
With --clip:
  clip_text_features/qid{q}.npz       "last_hidden_state" float32 (Lq, 512 for ViT-B/32): the CLIP text
                                      encoder's final (layer-normed, unprojected) token states, start and end
                                      tokens included, truncated to the tokenizer's max length - the
                                      Moment-DETR / QVHighlights release convention.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from absl import flags
from transformers import AutoTokenizer, CLIPModel

from lmr_jax import cli
from preprocess import io_utils, runtime
from preprocess.llama_embedding import EMBEDDING_KEY, LlamaEmbedder

logger = logging.getLogger("preprocess.text_features")


def _define_flags(flag_values) -> None:
  flags.DEFINE_list(
      "annotations",
      [],
      "comma-separated jsonl files whose queries to encode",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "llama",
      None,
      "Llama checkpoint (hub id or directory) for caption and caption-query features",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "embedding_key",
      EMBEDDING_KEY,
      "safetensors name of the embedding table",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "captions",
      None,
      "captions/{vid}.json directory (default: OUT/captions)",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "clip",
      None,
      "CLIP checkpoint for clip_text_features, e.g. openai/clip-vit-base-patch32",
      flag_values=flag_values,
  )
  io_utils.define_run_flags(flag_values)
  runtime.define_device_flags(flag_values, half_on_gpu=False)


def write_caption_features(captions_path: Path, out_path: Path, llama: LlamaEmbedder) -> None:
  """caption_features/{vid}.npz from captions/{vid}.json: each caption's mean Llama embedding vector,
  with the captions and their instructions."""
  with open(captions_path, encoding="utf-8") as f:
    record = json.load(f)
  io_utils.save_npz(
      out_path,
      features=np.stack([llama.mean_vector(c) for c in record["captions"]]).astype(np.float32),
      captions=np.array(record["captions"], dtype=str),
      instructions=np.array(record["instructions"], dtype=str),
  )


def caption_features(
    args: types.SimpleNamespace, embedder: Callable[[], LlamaEmbedder]
) -> io_utils.RunReport:
  captions_dir = args.captions or args.out / "captions"
  available = [p.stem for p in captions_dir.glob("*.json")]
  if not available:
    logger.warning(
        "no caption files in %s: run `python -m preprocess.captions` first", captions_dir
    )
  vids = io_utils.shard_keys(available, args.shard, args.num_shards)

  def out_path(vid: str) -> Path:
    return args.out / "caption_features" / f"{vid}.npz"

  def work(vid: str, llama: LlamaEmbedder) -> None:
    write_caption_features(captions_dir / f"{vid}.json", out_path(vid), llama)

  return io_utils.run_keys("caption_features", vids, out_path, embedder, work=work, logger=logger)


def caption_query_features(
    args: types.SimpleNamespace, queries: dict[int, str], embedder: Callable[[], LlamaEmbedder]
) -> io_utils.RunReport:
  qids = io_utils.shard_keys(queries, args.shard, args.num_shards)

  def out_path(qid: int) -> Path:
    return args.out / "caption_query_features" / f"qid{qid}.npz"

  def work(qid: int, llama: LlamaEmbedder) -> None:
    vectors = llama.token_vectors(queries[qid])
    if not len(vectors):
      raise ValueError("the query has no tokens")
    io_utils.save_npz(out_path(qid), last_hidden_state=vectors)

  return io_utils.run_keys(
      "caption_query_features", qids, out_path, embedder, work=work, logger=logger
  )


class ClipTextEncoder:
  """CLIP's text tower: per-token final hidden states of one query."""

  def __init__(self, checkpoint: str, device: torch.device, dtype: torch.dtype):
    self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    self.model = CLIPModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    self.device = device
    # the tokenizer's limit (77 for OpenAI CLIP), never past the model's position table
    self.max_length = min(
        self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings
    )

  @torch.inference_mode()
  def __call__(self, text: str) -> np.ndarray:
    tokens = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
    hidden = self.model.text_model(**tokens.to(self.device)).last_hidden_state[0]
    return hidden.float().cpu().numpy()


def clip_text_features(args: types.SimpleNamespace, queries: dict[int, str]) -> io_utils.RunReport:
  qids = io_utils.shard_keys(queries, args.shard, args.num_shards)

  def out_path(qid: int) -> Path:
    return args.out / "clip_text_features" / f"qid{qid}.npz"

  def load() -> ClipTextEncoder:
    return ClipTextEncoder(args.clip, *runtime.resolve(args.device, args.dtype, half_on_gpu=False))

  def work(qid: int, encoder: ClipTextEncoder) -> None:
    io_utils.save_npz(out_path(qid), last_hidden_state=encoder(queries[qid]))

  return io_utils.run_keys("clip_text_features", qids, out_path, load, work=work, logger=logger)


def main(argv: list[str] | None = None) -> int:
  return cli.run_command(_define_flags, _encode_all, __doc__, argv)


def _encode_all(args: types.SimpleNamespace) -> int:
  if not (args.llama or args.clip):
    raise cli.UsageError("nothing to do: pass --llama and/or --clip")
  if args.clip and not args.annotations:
    raise cli.UsageError("--clip encodes queries: pass --annotations")
  io_utils.setup_logging(args.log_level)
  args.out = Path(args.out)
  args.captions = Path(args.captions) if args.captions else None
  queries = io_utils.load_queries(args.annotations)
  # one embedding table for both Llama outputs, read only if one of them has work left
  embedder = functools.cache(functools.partial(LlamaEmbedder, args.llama, args.embedding_key))
  reports = []
  if args.llama:
    reports.append(caption_features(args, embedder))
    if queries:
      reports.append(caption_query_features(args, queries, embedder))
  if args.clip:
    reports.append(clip_text_features(args, queries))
  return io_utils.summarize(reports, logger)


if __name__ == "__main__":
  sys.exit(main())
