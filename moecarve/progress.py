"""Progress reporting through an injected callback (tqdm in the CLI, job events in the service)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # load | calibrate | evaluate-dense | teacher | carve | recover | evaluate | export
    step: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


def no_progress(_event: ProgressEvent) -> None:
    return None


def never_cancel() -> bool:
    return False
