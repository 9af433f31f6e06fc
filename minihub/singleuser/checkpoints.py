"""Checkpoints stored as jupyter_server stores them: dir/.ipynb_checkpoints/name-<id>.ext.

One checkpoint id ("checkpoint") per file, as jupyter_server's FileCheckpoints; copies are
atomic, so a crash during a checkpoint or a restore leaves the previous file.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import BadRequest, NotFound
from ..isotime import isoformat
from .contents import CHECKPOINT_DIR, ContentsManager, atomic_copy

CHECKPOINT_ID = "checkpoint"


class Checkpoints:
    def __init__(self, contents: ContentsManager) -> None:
        self.contents = contents

    def _file(self, path: str) -> str:
        os_path = self.contents.os_path(path)
        if not os.path.exists(os_path):
            raise NotFound(f"No such file: {path}")
        if os.path.isdir(os_path):
            raise BadRequest("Directories have no checkpoints")
        return os_path

    @staticmethod
    def _checkpoint_path(os_path: str, checkpoint_id: str) -> str:
        folder, name = os.path.split(os_path)
        base, ext = os.path.splitext(name)
        return os.path.join(folder, CHECKPOINT_DIR, f"{base}-{checkpoint_id}{ext}")

    @staticmethod
    def _model(cp_path: str, checkpoint_id: str) -> dict[str, Any]:
        return {"id": checkpoint_id, "last_modified": isoformat(os.stat(cp_path).st_mtime)}

    def create(self, path: str) -> dict[str, Any]:
        os_path = self._file(path)
        cp_path = self._checkpoint_path(os_path, CHECKPOINT_ID)
        os.makedirs(os.path.dirname(cp_path), exist_ok=True)
        atomic_copy(os_path, cp_path)
        return self._model(cp_path, CHECKPOINT_ID)

    def list(self, path: str) -> list[dict[str, Any]]:
        cp_path = self._checkpoint_path(self._file(path), CHECKPOINT_ID)
        return [self._model(cp_path, CHECKPOINT_ID)] if os.path.isfile(cp_path) else []

    def restore(self, path: str, checkpoint_id: str) -> None:
        os_path = self._file(path)
        cp_path = self._existing(os_path, path, checkpoint_id)
        atomic_copy(cp_path, os_path)

    def delete(self, path: str, checkpoint_id: str) -> None:
        cp_path = self._existing(self._file(path), path, checkpoint_id)
        os.unlink(cp_path)

    def _existing(self, os_path: str, path: str, checkpoint_id: str) -> str:
        cp_path = self._checkpoint_path(os_path, checkpoint_id)
        if not os.path.isfile(cp_path):
            raise NotFound(f"Checkpoint does not exist: {path}@{checkpoint_id}")
        return cp_path

    def rename_all(self, old_path: str, new_path: str) -> None:
        """Move checkpoints along with their file (call after the file was renamed)."""
        new_os = self.contents.os_path(new_path)
        if os.path.isdir(new_os):
            return
        old_os = os.path.join(
            os.path.dirname(self.contents.os_path(old_path)), os.path.basename(old_path)
        )
        old_cp = self._checkpoint_path(old_os, CHECKPOINT_ID)
        if os.path.isfile(old_cp):
            new_cp = self._checkpoint_path(new_os, CHECKPOINT_ID)
            os.makedirs(os.path.dirname(new_cp), exist_ok=True)
            os.replace(old_cp, new_cp)

    def delete_all(self, path: str) -> None:
        os_path = self.contents.os_path(path)
        cp_path = self._checkpoint_path(os_path, CHECKPOINT_ID)
        if os.path.isfile(cp_path):
            os.unlink(cp_path)
