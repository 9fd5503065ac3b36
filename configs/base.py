"""Settings shared by every LMR config: the paper's model and loss (arXiv 2405.12540, Sec. IV-B).

Every key, its default and what it takes are declared once, in ``lmr_jax/config_keys.py`` (with why
each default is what it is). Dataset configs (qvh.py, charades.py, synthetic.py) start from
``get_base_config()`` and set their data.
"""

import ml_collections

from lmr_jax import config_keys


def get_base_config() -> ml_collections.ConfigDict:
  return config_keys.base_config()
