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
