"""Where the training stream stands; saved with every checkpoint so that a resumed run is exact."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """The next batch is batch ``step`` of epoch ``epoch``."""

  epoch: int = 0
  step: int = 0

  def advance(self, steps_per_epoch: int) -> DataPosition:
    """The position after this batch."""
    if self.step + 1 == steps_per_epoch:
      return DataPosition(self.epoch + 1, 0)
    return DataPosition(self.epoch, self.step + 1)
