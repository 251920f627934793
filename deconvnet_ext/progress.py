"""Progress that suits where it goes: a tqdm bar on a terminal; when the output is a
file or a pipe (a redirected log, CI), one plain line every few seconds instead of
tqdm's carriage-return frames (a redirected demo log was 1.2 MB of them).

    bar = progress_bar(total=50, desc="evaluate", unit="img")
    bar.update(1); bar.set_postfix(loss="0.12"); bar.close()
    for x in progress_bar(items, desc="synth"): ...

DECONVNET_PROGRESS_INTERVAL sets the seconds between plain lines (default 5).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Optional, TextIO

DEFAULT_INTERVAL_S = 5.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("DECONVNET_PROGRESS_INTERVAL",
                                             DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", unit: str = "it", disable: bool = False,
                 file: Optional[TextIO] = None, initial: int = 0, **tqdm_kwargs: Any):
    """A tqdm bar (``dynamic_ncols``) when ``file`` (default stderr) is a terminal, else
    a ``PlainProgress`` with the same methods (update, set_postfix, set_description,
    close, iteration, ``with``). Extra keyword arguments go to tqdm only."""
    file = file if file is not None else sys.stderr
    if not disable and not _is_terminal(file):
        return PlainProgress(iterable, total=total, desc=desc, unit=unit, file=file,
                             initial=initial)
    from tqdm import tqdm
    tqdm_kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file,
                initial=initial, **tqdm_kwargs)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class PlainProgress:
    """tqdm's interface, printing "desc: n/total unit (p%), rate, elapsed, eta,
    postfix" as one line at most every ``interval_s`` seconds, and a last line on
    close."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", unit: str = "it", file: Optional[TextIO] = None,
                 initial: int = 0, interval_s: Optional[float] = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.n = initial
        self._initial = initial
        self.interval_s = _interval() if interval_s is None else interval_s
        self._start = time.monotonic()
        self._last_print = self._start
        self._postfix = ""
        self._closed = False

    def format_line(self) -> str:
        elapsed = time.monotonic() - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _print(self) -> None:
        self._last_print = time.monotonic()
        try:
            print(self.format_line(), file=self.file, flush=True)
        except (OSError, ValueError):  # the log went away: progress is not worth a crash
            pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last_print >= self.interval_s:
            self._print()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._print()

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress: nothing to iterate (no iterable given)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
