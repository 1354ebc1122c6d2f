"""A quiet console for the scripts: TensorFlow's C++ start-up logs filtered at the file
descriptor (they bypass Python), unless the user chose a level with TF_CPP_MIN_LOG_LEVEL."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# absl's banner, printed before TensorFlow reads any log level.
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
# A C++ log line: level letter, date, time, thread, file:line].
_CPP_LOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+):\d+\] (.*)$")


def _no_gpu_driver() -> bool:
    return not os.path.exists("/proc/driver/nvidia/version")


def is_noise(line: str, no_gpu_driver: bool) -> bool:
    """Whether a stderr line is start-up noise: absl's banner, C++ info and warning lines, and
    the CUDA initialisation error of a machine that has no NVIDIA driver at all."""
    if line.startswith(_ABSL_BANNER):
        return True
    match = _CPP_LOG.match(line)
    if match is None:
        return False
    level, source, message = match.groups()
    if level in "IW":
        return True
    return no_gpu_driver and source == "cuda_platform.cc" and "failed call to cuInit" in message


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Passes the process's stderr (file descriptor 2) through a filter dropping `is_noise`
    lines, for the duration of the block. Does nothing when not `enabled` (the user chose a
    TensorFlow log level) or when sys.stderr is not the process's stderr (e.g. captured by a
    test runner)."""
    if not enabled or sys.stderr is not sys.__stderr__:
        yield
        return
    try:
        descriptor = sys.__stderr__.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(descriptor)
    read_end, write_end = os.pipe()
    os.dup2(write_end, descriptor)
    os.close(write_end)
    no_gpu_driver = _no_gpu_driver()

    def forward():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(os.dup(saved), "wb", 0) as target:
            for raw in pipe:
                if not is_noise(raw.decode("utf-8", "replace").rstrip("\n"), no_gpu_driver):
                    target.write(raw)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, descriptor)  # closes the pipe's last write end: the thread sees EOF
        thread.join(timeout=5)
        os.close(saved)


# Set by a command's --quiet: no progress output at all.
QUIET = False


def set_quiet(quiet: bool) -> None:
    """`--quiet`: the commands switch progress output off here (the one global they set)."""
    global QUIET
    QUIET = bool(quiet)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Count, rate and time left of long work, one helper for every command.

    On a terminal a live bar (rich, installed with Keras); otherwise (log files, CI) one line
    about every 10% of `total` — or every `every` items when the total is unknown — with the
    rate and time left; nothing with `--quiet`. Use `update(done)` or `advance(count)`, and
    `close()` (or `with Progress(...) as progress:`).
    """

    def __init__(self, label: str, total: int | None, log=print, tty: bool | None = None,
                 unit: str = "images", every: int = 1000):  # fmt: skip
        import time

        self.label, self.total, self.log, self.unit = label, total, log, unit
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.step = max(1, -(-total // 10)) if total else every
        self.done, self.reported, self.started = 0, 0, time.monotonic()
        self._clock = time.monotonic
        self._bar = None
        if self.tty and not QUIET:
            self._bar = self._rich_bar()

    def _rich_bar(self):
        try:
            from rich import progress as rich
        except ImportError:
            return None
        bar = rich.Progress(
            rich.TextColumn("{task.description}"),
            rich.BarColumn(),
            rich.MofNCompleteColumn(),
            rich.TextColumn(self.unit),
            rich.TaskProgressColumn(show_speed=True),
            rich.TimeRemainingColumn(),
        )
        bar.start()
        self._task = bar.add_task(self.label, total=self.total)
        return bar

    def line(self) -> str:
        """The progress as one line: label, count, share, rate and time left."""
        elapsed = max(self._clock() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label} {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done // self.total}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        elif self.total and self.done >= self.total:
            text += f", {_duration(elapsed)}"
        return text

    def update(self, done: int) -> None:
        self.done = done
        if QUIET:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        finished = self.total is not None and done >= self.total
        if done - self.reported >= self.step or (finished and self.reported < done):
            self.reported = done
            self.log(self.line())

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
