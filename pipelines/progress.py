"""Live training progress from rank 0 to the driver, as it happens.

Ray Train's reports reach its controller actor, not the process that called `fit()`, and they come
only with checkpoints; MLflow receives metrics only once their checkpoint is stored. So rank 0
puts a small progress record on a Ray queue (an actor that needs no CPU) at every log, validation
and checkpoint step, and a thread in the driver hands each record to the caller's callback.
Progress is best effort: a full or lost queue never slows or fails training.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

ProgressFn = Callable[[dict[str, Any]], None]


class ProgressSender:
    """Worker side: rank 0 sends {step, total, loss_bits, val_bits, samples_per_second, checkpoint_step}."""

    def __init__(self, queue, total: int, first_step: int):
        self.queue, self.total = queue, total
        self.state: dict[str, Any] = {"step": first_step, "total": total}

    def send(self, step: int, **values: Any) -> None:
        if self.queue is None:
            return
        self.state.update(step=step, **{k: v for k, v in values.items() if v is not None and not _nan(v)})
        try:
            self.queue.put_nowait(dict(self.state))
        except Exception:  # full, or the driver went away: progress is not the job
            pass


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class ProgressReceiver:
    """Driver side: a queue the workers get a handle to, and a thread passing its records to `on_progress`
    with an ETA (from the steps done since the first record) added."""

    def __init__(self, on_progress: ProgressFn):
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self.on_progress = on_progress
        self._stop = threading.Event()
        self._first: tuple[float, int] | None = None
        self._thread = threading.Thread(target=self._run, name="bfn-progress", daemon=True)

    def __enter__(self) -> "ProgressReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.queue.shutdown()
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record = self.queue.get(timeout=0.5)
            except Exception:  # Empty, or the queue is gone
                continue
            self._deliver(record)

    def _deliver(self, record: dict[str, Any]) -> None:
        now, step = time.monotonic(), int(record.get("step", 0))
        if self._first is None:
            self._first = (now, step)
        t0, s0 = self._first
        if step > s0:
            record["eta_s"] = (now - t0) / (step - s0) * max(int(record.get("total", step)) - step, 0)
        try:
            self.on_progress(record)
        except Exception:  # a display problem must not end training
            pass
