"""Progress of a whole training run: step counter, elapsed time and ETA, on a terminal or in a log.

On a terminal, one rich bar for the run (not one per epoch): `epoch 3/10`, the bar,
`step 1,234/5,000`, the running loss/accuracy/throughput of the epoch, elapsed time and the
run's ETA. The per-epoch lines the loop logs print above the bar. Without a terminal (a pipe,
a CI log, `nohup`), a plain line every `interval_s` seconds, so a long epoch is never silent:

    epoch 3/10  step 1234/5000 (24.7%)  loss 0.8321 acc 71.2%  5230 img/s  elapsed 1:02  ETA 3:10

The ETA is the remaining steps at the rate measured since this process started (a resumed run
does not count the steps it did not run).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO

INTERVAL_S = 30.0  # seconds between plain progress lines; EDGEKD_PROGRESS_INTERVAL overrides


def format_duration(seconds: float) -> str:
    """62 -> '1:02', 3725 -> '1:02:05'."""
    s = int(max(seconds, 0) + 0.5)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def interval_from_env(default: float = INTERVAL_S) -> float:
    text = os.environ.get("EDGEKD_PROGRESS_INTERVAL", "").strip()
    try:
        return max(float(text), 0.0) if text else default
    except ValueError:
        return default


class RunProgress:
    """Progress over all `total_steps` optimizer steps of a run (from `start_step` when resuming)."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True,
                 interval_s: Optional[float] = None, stream: Optional[TextIO] = None,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter):
        self.total, self.start_step, self.step = int(total_steps), int(start_step), int(start_step)
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval_from_env() if interval_s is None else interval_s
        self.log, self.clock = log, clock
        self.t0 = self.last_line = clock()
        self.desc, self.info = "", ""
        self.bar = None
        self.enabled = enabled
        if enabled and _isatty(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("step"), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TextColumn("elapsed {task.fields[elapsed]}"),
                       TextColumn("ETA {task.fields[eta]}"))
            self.bar = Progress(*columns, console=Console(file=self.stream), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total, completed=self.step, info="", elapsed="0:00", eta="-")

    # ------------------------------------------------------------------------------------------
    def eta_s(self) -> Optional[float]:
        """Seconds left at the rate of this process's steps so far; None before the first step."""
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (self.clock() - self.t0) / done * max(self.total - self.step, 0)

    def line(self) -> str:
        pct = 100.0 * self.step / max(self.total, 1)
        eta = self.eta_s()
        parts = [self.desc, f"step {self.step}/{self.total} ({pct:.1f}%)", self.info,
                 f"elapsed {format_duration(self.elapsed_s())}", f"ETA {_eta_text(eta)}"]
        return "  ".join(p for p in parts if p)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """`epoch` counts from 1."""
        self.desc = f"epoch {epoch}/{epochs}"

    def update(self, step: int, info: str = "") -> None:
        """After optimizer step `step` (global, counting from 1); `info` is e.g. 'loss 0.83 acc 71.2%'."""
        self.step, self.info = int(step), info
        if not self.enabled:
            return
        if self.bar is not None:
            eta = self.eta_s()
            self.bar.update(self.task, completed=self.step, description=self.desc, info=info,
                            elapsed=format_duration(self.elapsed_s()), eta=_eta_text(eta))
            return
        now = self.clock()
        if self.interval and now - self.last_line >= self.interval:
            self.last_line = now
            self.log(self.line())

    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _eta_text(eta: Optional[float]) -> str:
    return format_duration(eta) if eta is not None else "-"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


__all__ = ["RunProgress", "format_duration", "INTERVAL_S"]
