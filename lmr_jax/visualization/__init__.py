"""Figures (matplotlib, PNG): training curves, per-query timelines (paper Fig. 4), VQF attention
(Fig. 5) and the C-QVal table; ``plots`` draws from plain data, ``attention`` runs the model for it.
"""

from lmr_jax.errors import LmrError


class PlotError(LmrError):
  """Input a figure cannot be drawn from (missing or malformed file); one line naming the file.

  Defined here, not in ``plots``, so that callers can catch it without importing matplotlib."""
