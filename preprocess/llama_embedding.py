"""Llama's frozen input embedding layer, loaded on its own (paper Sec. IV-B).

LMR encodes captions and caption-side queries with the LLM's token embedding table only, not the
transformer. Loading a 7B model to read one (32000, 4096) matrix would cost ~14 GB of memory and minutes of
I/O, so the matrix is read straight from the checkpoint's safetensors: for a sharded checkpoint
`model.safetensors.index.json` names the one shard that holds it, and `safe_open` reads just that tensor.
Works with a local directory or a hub id (only the index and that shard are downloaded).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer
from transformers.utils import cached_file

EMBEDDING_KEY = (
    "model.embed_tokens.weight"  # LlamaForCausalLM checkpoints, e.g. meta-llama/Llama-2-7b-hf
)


def _checkpoint_file(checkpoint: str | os.PathLike, filename: str) -> str | None:
  """Local path of a checkpoint file (downloaded if the checkpoint is a hub id); None if it has none."""
  return cached_file(str(checkpoint), filename, _raise_exceptions_for_missing_entries=False)


def load_embedding_matrix(checkpoint: str | os.PathLike, key: str = EMBEDDING_KEY) -> torch.Tensor:
  """The (vocab, hidden) embedding table, in the dtype it is stored in."""
  index_path = _checkpoint_file(checkpoint, "model.safetensors.index.json")
  if index_path is not None:
    with open(index_path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    if key not in weight_map:
      raise KeyError(f"{key!r} is not in {index_path}; pass the right --embedding_key")
    filename = weight_map[key]
  else:
    filename = "model.safetensors"
  path = _checkpoint_file(checkpoint, filename)
  if path is None:
    raise FileNotFoundError(
        f"{checkpoint} has no {filename} (only safetensors checkpoints are supported)"
    )
  with safe_open(path, framework="pt") as f:
    if key not in f.keys():
      raise KeyError(f"{key!r} is not in {path}; pass the right --embedding_key")
    return f.get_tensor(key)


class LlamaEmbedder:
  """Token vectors of text under the frozen embedding table, special tokens (BOS/EOS/padding) excluded."""

  def __init__(self, checkpoint: str | os.PathLike, key: str = EMBEDDING_KEY):
    self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    self.matrix = load_embedding_matrix(checkpoint, key)
    self.dim = self.matrix.shape[1]
    self._special_ids = set(self.tokenizer.all_special_ids)

  def token_vectors(self, text: str) -> np.ndarray:
    """float32 (num_tokens, hidden); num_tokens is 0 for text without tokens."""
    ids = [
        i
        for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if i not in self._special_ids
    ]
    return self.matrix[torch.tensor(ids, dtype=torch.long)].float().numpy()

  def mean_vector(self, text: str) -> np.ndarray:
    """float32 (hidden,): the mean token vector; zeros for an empty caption (the LLM said nothing)."""
    vectors = self.token_vectors(text)
    return vectors.mean(0) if len(vectors) else np.zeros(self.dim, np.float32)
