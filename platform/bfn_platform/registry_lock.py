"""The registry lock: one promotion of a registered model at a time, across processes and machines.

MLflow has no compare-and-set on aliases or tags, but creating a registered model is atomic (names
are unique), so a lock is a registered model named ``bfn-lock.<name>`` with its owner and expiry as
tags; a lock whose holder died expires after LOCK_TTL_S and is broken by the next promotion.
"""
from __future__ import annotations

import os
import random
import time
import uuid

from bfn_platform.errors import BfnError
from pipelines.lineage import who

LOCK_PREFIX = "bfn-lock."
LOCK_OWNER_TAG = "bfn.lock.owner"
LOCK_EXPIRES_TAG = "bfn.lock.expires"
LOCK_TTL_S = 120.0  # a promotion takes a few requests; a lock older than this belongs to a dead process



def _error_code(err: Exception) -> str:
    return getattr(err, "error_code", "") or ""


class RegistryLock:
    """``with RegistryLock(client, name): ...``: one promotion of `name` at a time, across processes."""

    def __init__(self, client, name: str, timeout: float = 60.0, ttl: float = LOCK_TTL_S):
        self.client, self.name, self.timeout, self.ttl = client, name, timeout, ttl
        self.lock_name = LOCK_PREFIX + name
        self.token = f"{who()}:{os.getpid()}:{uuid.uuid4().hex}"

    def _read(self) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(self.lock_name).tags)
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" in _error_code(err) or "not found" in str(err).lower():
                return None
            raise

    def acquire(self) -> None:
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                # Atomic: the name is unique in the registry. Owner and expiry are set in the same request.
                self.client.create_registered_model(
                    self.lock_name, tags={LOCK_OWNER_TAG: self.token, LOCK_EXPIRES_TAG: f"{time.time() + self.ttl:.3f}"},
                    description=f"promotion lock of {self.name} (bfn models promote); removed when it finishes")
                tags = self._read()
                if tags and tags.get(LOCK_OWNER_TAG) == self.token:
                    return
            except MlflowException as err:
                if "ALREADY_EXISTS" not in _error_code(err) and "already exists" not in str(err).lower():
                    raise
            held = self._read()
            if held is not None and float(held.get(LOCK_EXPIRES_TAG, "0") or 0) < time.time():
                self._break(held)  # its holder died: take over
                continue
            if time.monotonic() > deadline:
                owner = (held or {}).get(LOCK_OWNER_TAG, "?").split(":")[0]
                raise BfnError(f"another promotion of {self.name} (by {owner}) holds the registry lock {self.lock_name}; "
                               f"retry in a minute (a lock left by a crashed process expires after {self.ttl:.0f} s)")
            time.sleep(0.1 + random.random() * 0.3)

    def _break(self, held: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        current = self._read()  # delete only the stale lock we saw, not a fresh one taken meanwhile
        if current is None or current.get(LOCK_OWNER_TAG) != held.get(LOCK_OWNER_TAG):
            return
        try:
            self.client.delete_registered_model(self.lock_name)
        except MlflowException:
            pass

    def release(self) -> None:
        from mlflow.exceptions import MlflowException

        held = self._read()
        if held is not None and held.get(LOCK_OWNER_TAG) == self.token:
            try:
                self.client.delete_registered_model(self.lock_name)
            except MlflowException:
                pass

    def __enter__(self) -> "RegistryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_lock(name: str) -> bool:
    return name.startswith(LOCK_PREFIX)
