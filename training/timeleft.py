"""A training progress bar that also shows the time left of a time-bound run (``--trainer.max_time``),
as ``infomax up`` trains: ``--trainer.callbacks+=training.timeleft.TimeLeftBar``."""

from __future__ import annotations

from pytorch_lightning.callbacks import Timer, TQDMProgressBar


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a number of seconds."""
    s = max(0, int(round(seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class TimeLeftBar(TQDMProgressBar):
    """Lightning's bar with ``left=m:ss``, the training time left before the budget runs out."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        left = timer.time_remaining("train") if timer is not None else None
        if left is not None:
            items["left"] = clock(left)
        return items
