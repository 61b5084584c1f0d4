"""Progress of a long stage, told while it works: steps done of the total, rate, time left and
whatever the stage adds (the current loss of a training).

Snakemake sends each job's stderr to ``results/logs/<stage>/<name>.log``, so the report is a
plain log line there: the first once ``first_after_steps`` steps are done (or ``interval_s``
seconds passed, if sooner), then one every ``interval_s`` seconds, and a last one when the work
is done. On a terminal (a command run by hand) a tqdm bar takes the lines' place.

    progress = Progress("pretrain tokens-ntp, epoch 1/3", total=626, unit="step")
    for batch in batches:
        ...
        progress.update(loss=running_loss)
    progress.close()
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

log = logging.getLogger("taufm.progress")

INTERVAL_S = 10.0
FIRST_AFTER_STEPS = 10


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 7 min``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts the steps of one piece of work and reports them (see the module docstring)."""

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "step",
        interval_s: float = INTERVAL_S,
        first_after_steps: int = FIRST_AFTER_STEPS,
        clock: Callable[[], float] = time.monotonic,
        bar: bool | None = None,
        already_done: int = 0,
    ) -> None:
        """``already_done``: steps done before this process started (a resumed run): counted in
        the steps done, not in the rate."""
        self.what, self.total, self.unit = what, total, unit
        self.interval_s, self.first_after_steps = interval_s, first_after_steps
        self.clock = clock
        self.already_done = already_done
        self.done = already_done
        self.info: dict[str, float | str] = {}
        self.started = self._last = clock()
        self._reported = False
        self._bar = None
        if bar if bar is not None else _stderr_is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already_done, desc=what, unit=unit, leave=False, file=sys.stderr)

    def update(self, n: int = 1, **info: float | str) -> None:
        """``n`` more steps done; ``info`` (e.g. ``loss=2.31``) goes into the next report."""
        self.done += n
        self.info.update(info)
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix({k: _format(v) for k, v in self.info.items()}, refresh=False)
            return
        now = self.clock()
        first = not self._reported and (self.done - self.already_done >= self.first_after_steps or now - self.started >= self.interval_s)
        if first or (self._reported and now - self._last >= self.interval_s):
            self._report(now)

    def line(self, now: float | None = None) -> str:
        """The report as it stands: ``what: 120/626 steps (19%), 7.9 steps/s, 1 min 4 s left, loss 3.214``."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.already_done) / elapsed
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        if self.total:
            text = f"{self.what}: {self.done}/{self.total} {units} ({100 * self.done / self.total:.0f}%)"
        else:
            text = f"{self.what}: {self.done} {units}"
        text += f", {rate:.3g} {units}/s"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            text += f", {duration(left)} left" if self.done < self.total else f", done in {duration(elapsed)}"
        extra = ", ".join(f"{k.replace('_', ' ')} {_format(v)}" for k, v in self.info.items())
        return text + (f", {extra}" if extra else "")

    def _report(self, now: float) -> None:
        log.info("%s", self.line(now))
        self._reported, self._last = True, now

    def close(self) -> None:
        """The last report: how long the whole took (a closed bar leaves its line behind)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._report(self.clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()


def _format(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
