"""docs/demo.md's screenshot of the synthetic page, made from real synthetic workdirs: serves demo.py
on a free local port and drives it in headless Chromium as tests/test_demo_synthetic.py does.

  python tests/demo_screenshot.py --workdir=workdir/synthetic \
      --compare_workdir=workdir/synthetic_no_captions --out=docs/demo_synthetic.png

Run it from the folder the workdirs' data paths are relative to (the repository root, as train.py
wrote them). The video is --vid (default: the first val video with three annotated queries, a
target and two look-alikes); the queries are its first annotated query, picked, and a typed one
naming one of its look-alike events.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import browser as browser_lib  # noqa: E402
from lmr_jax.data import queries as queries_lib  # noqa: E402
from lmr_jax.demo import synthetic as demo_synthetic  # noqa: E402
from lmr_jax.training import checkpoint as checkpoint_lib  # noqa: E402



def _queries(config, vid: str | None) -> tuple[str, str, str, str]:
  """(vid, the picker's label of its first annotated query, that query, a typed look-alike query)."""
  annotations = queries_lib.load_annotations(config.data.annotation_files["val"])
  by_vid: dict[str, list] = {}
  for ann in annotations:
    by_vid.setdefault(ann.vid, []).append(ann)
  vid = vid or next(v for v, anns in sorted(by_vid.items()) if len(anns) == 3)
  first = by_vid[vid][0]
  path = Path(config.data.feat_root) / config.data.caption_feat_dir / f"{vid}.npz"
  with np.load(path) as npz:
    events = demo_synthetic.caption_events([str(c) for c in npz["captions"]])
  picked = demo_synthetic.Subject.of(first.query)
  other = next(
      e
      for e in events
      if (e.actor, e.action) == (picked.actor, picked.action)
      and e.scene not in (None, picked.scene)
  )
  return (
      vid,
      f"val qid {first.qid}: {first.query}",
      first.query,
      (f"{other.actor} {other.action} in the {other.scene}"),
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--compare_workdir")
  parser.add_argument("--vid")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  vid, label, picked, typed = _queries(checkpoint_lib.load_config(args.workdir), args.vid)
  cache = tempfile.mkdtemp(prefix="lmr_screenshot_")
  flags = [f"--workdir={args.workdir}", "--top_k=3", f"--cache_dir={cache}/cache"]
  flags += [f"--compare_workdir={args.compare_workdir}"] if args.compare_workdir else []
  with browser_lib.serve_demo(flags, Path(cache) / "demo.log") as url:
    with browser_lib.open_browser(Path(cache)) as driver:
      browser_lib.ask_synthetic(driver, url, vid, label, [picked, typed])
      WebDriverWait(driver, 60).until(  # the saliency plot drawn
          lambda d: d.find_elements(By.CSS_SELECTOR, "#lmr-saliency .mark-line path")
      )
      driver.save_screenshot(args.out)
  print(f"{vid}: {picked!r} (picked), {typed!r} (typed) -> {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
