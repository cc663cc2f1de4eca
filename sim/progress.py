"""Progress on stderr for the commands that can run longer than about a second.

One :class:`Progress` per command counts *work units* (actions, simulations, cases, or estimated seconds when a
command has stages of different kinds). On a terminal it is a tqdm bar that appears after ``delay_s`` (so quick
commands show nothing); elsewhere (a pipe, a log file, CI) it writes a plain line every ``interval_s`` and a
last one when done, only if the command ran longer than ``delay_s``; ``quiet`` silences both.

The ETA is honest: none before a warm-up (``warmup_s`` of measuring and ``warmup_frac`` of the work done), then
the remaining units over the rate measured so far. A command whose stages differ in kind counts estimated
seconds (:mod:`sim.budget`) as units and credits a stage's units when it completes, so a slow start (building
the step before its first action) is measured, not guessed: the ETA never starts at hours.
``stage(label)`` names what runs now; a background refresher keeps the elapsed time moving while a stage runs
without reporting units (a library call with no callback).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from tqdm import tqdm

from sim.budget import human_seconds


class _Bar(tqdm):  # type: ignore[misc]
    """tqdm with one more format field, ``{info}``: the stage, counts, elapsed time and the ETA."""

    info = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["info"] = self.info
        return d


class Progress:
    """Units done out of ``total``; use as a context manager, call :meth:`update` and :meth:`stage`."""

    def __init__(self, label: str, total: float, *, unit: str = "", quiet: bool = False, file: IO[str] | None = None,
                 delay_s: float = 1.0, interval_s: float = 10.0, warmup_s: float = 1.0, warmup_frac: float = 0.02,
                 tty: bool | None = None) -> None:
        self.label, self.total, self.unit = label, max(float(total), 1e-12), unit
        self.quiet = quiet
        self.file = file if file is not None else sys.stderr
        self.tty = bool(getattr(self.file, "isatty", lambda: False)()) if tty is None else tty
        self.delay_s, self.interval_s = delay_s, interval_s
        self.warmup_s, self.warmup_frac = warmup_s, warmup_frac
        self.done = 0.0
        self.stage_label = ""
        self._t0 = time.perf_counter()
        self._lines = 0
        self._last_line = self._t0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not quiet and self.tty:
            self._bar = _Bar(total=self.total, desc=label, file=self.file, delay=delay_s, leave=False,
                             dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {info}")
            self._bar.info = self._postfix()
        if not quiet:
            self._thread = threading.Thread(target=self._refresh_loop, daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------------------------------------- API
    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(ok=exc[0] is None)

    def update(self, units: float = 1.0) -> None:
        with self._lock:
            now = time.perf_counter()
            self.done = min(self.total, self.done + units)
            self._show(now)

    def stage(self, label: str) -> None:
        with self._lock:
            if label != self.stage_label:
                self.stage_label = label
                self._show(time.perf_counter(), force=True)

    def set_total(self, total: float) -> None:
        with self._lock:
            self.total = max(float(total), self.done, 1e-12)
            if self._bar is not None:
                self._bar.total = self.total

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the measured rate, or None during the warm-up."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self._t0
        if elapsed < self.warmup_s or self.done < self.warmup_frac * self.total or self.done <= 0:
            return None
        return (self.total - self.done) * elapsed / self.done

    def close(self, ok: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            elapsed = time.perf_counter() - self._t0
            if self._bar is not None:
                self._bar.close()
                self._bar = None
                if self._lines:  # the bar was drawn: leave a clean line for what follows
                    self._write_raw("\r\x1b[2K")
            if not self.quiet and not self.tty and self._lines:
                word = "done" if ok else "stopped"
                self._write(f"[{self.label}] {word} in {human_seconds(elapsed)}")

    # -------------------------------------------------------------------------------------------- drawing
    def _postfix(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        eta = self.eta_s(now)
        parts = [self.stage_label] if self.stage_label else []
        if self.unit:
            parts.append(f"{self.done:,.0f}/{self.total:,.0f} {self.unit}")
        parts.append(f"{human_seconds(now - self._t0)} elapsed")
        parts.append(f"ETA {human_seconds(eta)}" if eta is not None else "ETA after warm-up")
        return ", ".join(parts)

    def _show(self, now: float, force: bool = False) -> None:
        if self.quiet:
            return
        if now - self._t0 < self.delay_s:
            return
        if self._bar is not None:
            self._bar.info = self._postfix(now)
            self._bar.n = self.done
            if force or now - self._last_line >= 0.2:
                self._last_line = now
                self._lines += 1
                self._bar.refresh()
            return
        due = self._last_line + (self.interval_s if self._lines else 0.0)
        if now >= due or (force and self._lines):
            self._last_line = now
            self._lines += 1
            self._write(f"[{self.label}] {100 * self.done / self.total:3.0f}%  {self._postfix(now)}")

    def _write(self, line: str) -> None:
        self._write_raw(line + "\n")

    def _write_raw(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stderr never stops the work
            self.quiet = True

    def _refresh_loop(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._show(time.perf_counter())


def progress(label: str, total: float, **kwargs: Any) -> Progress:
    """A :class:`Progress` (see its arguments)."""
    return Progress(label, total, **kwargs)
