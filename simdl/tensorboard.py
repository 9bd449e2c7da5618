"""TensorBoard event files for run histories, written with ``tensorboardX`` (no TensorFlow needed).

Layout: ``ROOT/<run folder>/events.out.tfevents.*``, one folder per run, one scalar per history metric against the
``step`` entry of the history (``tensorboard --logdir ROOT`` shows every run as its own curve). ``tensorboardX`` is
an optional dependency (``pip install 'simdl[tensorboard]'`` or ``pip install tensorboardX``); the functions here
import it lazily and raise a clear error when it is missing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

_EVENT_GLOB = "events.out.tfevents.*"

MISSING = ("TensorBoard output needs the tensorboardX package (it writes event files without TensorFlow): "
           "pip install tensorboardX")


def available() -> bool:
    """Whether tensorboardX can be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(MISSING) from None
    return SummaryWriter


def run_folder(name: str) -> str:
    """A file-system-safe folder name for a run name (``"relaysgd/chain"`` -> ``"relaysgd_chain"``)."""
    safe = re.sub(r"[^A-Za-z0-9._=+,-]+", "_", str(name)).strip("._")
    return safe or "run"


class RunWriter:
    """Writes one run's scalars into ``root/run_folder(name)``; stale event files there are removed first, so writing
    the same run again replaces its curves instead of duplicating them. Use as a context manager or call
    :meth:`close`.

    Raises:
      ImportError: tensorboardX is not installed.
    """

    def __init__(self, root: str | Path, name: str):
        writer_cls = _summary_writer()
        self.path = Path(root) / run_folder(name)
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.glob(_EVENT_GLOB):
            old.unlink()
        self._writer = writer_cls(logdir=str(self.path), flush_secs=10)

    def add_row(self, row: Mapping[str, float], step_key: str = "step") -> None:
        """Log every finite numeric entry of one history row (except ``step_key``) at step ``row[step_key]``."""
        step = int(row[step_key])
        for tag, value in row.items():
            if tag == step_key or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if np.isfinite(value):
                self._writer.add_scalar(tag, float(value), step)

    def add_history(self, history: Mapping[str, Iterable[float]], step_key: str = "step") -> None:
        """Log a whole history (metric -> values over evaluation points, aligned with ``history[step_key]``)."""
        steps = list(np.asarray(history[step_key]).tolist())
        for i in range(len(steps)):
            self.add_row({k: np.asarray(v)[i].item() for k, v in history.items()
                          if np.ndim(v) == 1 and len(np.asarray(v)) > i}, step_key)  # per-worker metrics skipped

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_history(root: str | Path, name: str, history: Mapping[str, Iterable[float]]) -> Path:
    """Write one run's history as scalars to ``root/run_folder(name)`` (replacing earlier event files there).

    Returns:
      The run's folder.

    Raises:
      ImportError: tensorboardX is not installed.
    """
    with RunWriter(root, name) as w:
        w.add_history(history)
    return w.path


def _records(data: bytes):
    """Payloads of a TFRecord stream: ``uint64 length, uint32 crc, payload, uint32 crc`` (CRCs not checked)."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        start = pos + 12
        if start + length + 4 > len(data):
            break
        yield data[start:start + length]
        pos = start + length + 4


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read back the scalars of every event file in ``run_dir`` (not recursive).

    Returns:
      tag -> ``(steps int64 (k,), values float64 (k,))`` in file order.

    Raises:
      ImportError: tensorboardX (its event protobuf) is not installed.
      FileNotFoundError: no event file in ``run_dir``.
    """
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading event files needs the tensorboardX package: pip install tensorboardX") from None
    files = sorted(Path(run_dir).glob(_EVENT_GLOB))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files in {str(run_dir)!r}")
    out: dict[str, tuple[list, list]] = {}
    for f in files:
        for payload in _records(f.read_bytes()):
            ev = Event.FromString(payload)
            for v in ev.summary.value:
                if v.WhichOneof("value") == "simple_value":
                    steps, vals = out.setdefault(v.tag, ([], []))
                    steps.append(ev.step)
                    vals.append(v.simple_value)
    return {k: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in out.items()}
