"""The user's files as jupyter_server's contents models: read, save, create, copy, rename, delete.

Blocking filesystem code (handlers run it in a thread). Every API path is confined to the
notebook dir (no `..`, no symlink leading outside, no hidden files); saves are atomic.
What a client sends is checked before anything is written: a refused request stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import itertools
import mimetypes
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import BadRequest, Conflict, NotFound
from ..isotime import isoformat
from .strictjson import JSONInputError, check_value

HIDE_GLOBS = ("__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*~")
CHECKPOINT_DIR = ".ipynb_checkpoints"
COPY_PAT = re.compile(r"\-Copy\d*\.")
NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs)
PATH_MAX = 4096  # bytes in a path the kernel accepts
TEMP_STEM = 64  # bytes of a name kept in its temp file's name (which must fit NAME_MAX)
Model = dict[str, Any]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def atomic_write(os_path: str, data: bytes) -> None:
    """Write via a temp file in the same dir, fsync, rename: a crash leaves the old file."""
    _atomic(os_path, lambda f: f.write(data))


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as fin:
        _atomic(dst, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))


def _atomic(os_path: str, fill: Callable[[BinaryIO], object]) -> None:
    target = os.path.realpath(os_path)
    folder, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".~{_stem(name)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        _set_mode(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(folder)


def _set_mode(tmp: str, target: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~UMASK
    os.chmod(tmp, mode)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _hidden_name(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatch(name, g) for g in HIDE_GLOBS)


class ContentsManager:
    """Files under root_dir (plus shared dirs a symlink in it may lead to)."""

    def __init__(self, root_dir: str, shared_dirs: list[str] | tuple[str, ...] = ()) -> None:
        self.root_dir = root_dir
        self.roots = [os.path.realpath(root_dir)] + [os.path.realpath(d) for d in shared_dirs]

    # --- paths -----------------------------------------------------------------------------

    def os_path(self, path: str, writing: bool = False) -> str:
        """The OS path for an API path, refusing anything outside the notebook dir."""
        parts = [p for p in path.strip("/").split("/") if p]
        if any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
            raise NotFound(f"{path} is outside the notebook directory")
        _check_names(parts)
        if any(p.startswith(".") for p in parts):
            if writing:
                raise BadRequest(f"Cannot create or change hidden file or directory {path!r}")
            raise NotFound(f"No such file or directory: {path}")
        os_path = os.path.join(self.roots[0], *parts)
        if len(os.fsencode(os_path)) >= PATH_MAX:
            raise BadRequest(f"Path too long: the limit is {PATH_MAX} bytes with the notebook dir")
        if not self.inside(os.path.realpath(os_path)):
            raise NotFound(f"{path} is outside the notebook directory")
        return os_path

    def inside(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.roots)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.os_path(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.os_path(path))

    # --- reading ---------------------------------------------------------------------------

    def get(
        self, path: str, content: bool = True, type: str | None = None, format: str | None = None
    ) -> Model:
        path = path.strip("/")
        os_path = self.os_path(path)
        if not os.path.exists(os_path):
            raise NotFound(f"No such file or directory: {path}")
        if os.path.isdir(os_path):
            if type not in (None, "", "directory"):
                raise BadRequest(f"{path} is a directory, not a {type}", status=400)
            return self._dir_model(path, os_path, content)
        if type == "directory":
            raise BadRequest(f"{path} is not a directory")
        if type == "notebook" or (not type and path.endswith(".ipynb")):
            return self._notebook_model(path, os_path, content)
        return self._file_model(path, os_path, content, format)

    def _base_model(self, path: str, os_path: str, kind: str) -> Model:
        st = os.stat(os_path)
        return {
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "last_modified": isoformat(st.st_mtime),
            "created": isoformat(st.st_ctime),
            "content": None,
            "format": None,
            "mimetype": None,
            "size": st.st_size if kind != "directory" else None,
            "writable": os.access(os_path, os.W_OK),
            "hash": None,
            "hash_algorithm": None,
        }

    def _dir_model(self, path: str, os_path: str, content: bool) -> Model:
        model = self._base_model(path, os_path, "directory")
        if content:
            model["content"] = self._listing(path, os_path)
            model["format"] = "json"
        return model

    def _listing(self, path: str, os_path: str) -> list[Model]:
        entries = []
        for name in sorted(os.listdir(os_path)):
            entry = os.path.join(os_path, name)
            if _hidden_name(name) or not self.inside(os.path.realpath(entry)):
                continue
            try:
                kind = self._kind(entry, name)
                entries.append(self._base_model(f"{path}/{name}".lstrip("/"), entry, kind))
            except OSError:
                continue  # a broken symlink or a file that vanished meanwhile
        return entries

    @staticmethod
    def _kind(os_path: str, name: str) -> str:
        if os.path.isdir(os_path):
            return "directory"
        return "notebook" if name.endswith(".ipynb") else "file"

    def _notebook_model(self, path: str, os_path: str, content: bool) -> Model:
        model = self._base_model(path, os_path, "notebook")
        if content:
            nbformat = nbf()
            try:
                with open(os_path, encoding="utf-8") as f:
                    nb = nbformat.read(f, as_version=4)
                check_value(nb)  # the reply must be JSON a browser can parse
            except Exception as e:  # noqa: BLE001 - whatever nbformat chokes on is a 400
                raise BadRequest(f"Unreadable Notebook: {path} {e!r}"[:500]) from None
            model["content"] = nb
            model["format"] = "json"
            model["message"] = _validation_message(nb)
        return model

    def _file_model(self, path: str, os_path: str, content: bool, format: str | None) -> Model:
        model = self._base_model(path, os_path, "file")
        model["mimetype"] = mimetypes.guess_type(os_path)[0]
        if content:
            with open(os_path, "rb") as f:
                data = f.read()
            text, fmt = _decode(data, format, path)
            model["mimetype"] = model["mimetype"] or (
                "text/plain" if fmt == "text" else "application/octet-stream"
            )
            model.update(content=text, format=fmt)
        return model

    # --- writing ---------------------------------------------------------------------------

    def save(self, model: Model, path: str) -> tuple[Model, bool]:
        """Write a model; returns (the new model without content, whether it was created)."""
        path = path.strip("/")
        kind = model.get("type")
        if kind not in ("notebook", "file", "directory"):
            raise BadRequest("No file type provided" if not kind else f"Unhandled type {kind!r}")
        if "content" not in model and kind != "directory":
            raise BadRequest("No file content provided")
        os_path = self.os_path(path, writing=True)
        created = not os.path.lexists(os_path)
        if kind == "directory":
            self._make_dir(os_path, path)
            return self.get(path, content=False), created
        if os.path.isdir(os_path):
            raise BadRequest(f"Cannot save a {kind} over the directory /{path}")
        self._require_parent(os_path, path)
        if kind == "notebook":
            atomic_write(os_path, notebook_bytes(model["content"]))
        elif model.get("chunk") is not None:
            return self._save_chunk(model, path, os_path), created
        else:
            atomic_write(os_path, _encode(model["content"], model.get("format")))
        return self.get(path, content=False), created

    @staticmethod
    def _require_parent(os_path: str, path: str) -> None:
        parent = os.path.dirname(os_path)
        if os.path.isdir(parent):
            return
        where = path.rpartition("/")[0]
        if os.path.lexists(parent):
            raise BadRequest(f"Not a directory: {where}")
        raise NotFound(f"No such directory: {where}")

    @staticmethod
    def _make_dir(os_path: str, path: str) -> None:
        if os.path.lexists(os_path) and not os.path.isdir(os_path):
            raise BadRequest(f"Not a directory: {path}")
        os.makedirs(os_path, exist_ok=True)

    def _save_chunk(self, model: Model, path: str, os_path: str) -> Model:
        """Chunked upload (chunk 1..n, -1 last): staged in a hidden file, renamed at the end."""
        chunk = model["chunk"]
        if not isinstance(chunk, int) or isinstance(chunk, bool) or not (chunk == -1 or chunk >= 1):
            raise BadRequest("chunk must be an integer: 1, 2, ... and -1 for the last")
        data = _encode(model["content"], model.get("format"))
        folder, name = os.path.split(os.path.realpath(os_path))
        staging = os.path.join(folder, _staging_name(name))
        if chunk > 1 and not os.path.exists(staging):
            raise BadRequest(f"Upload of {path}: chunk {chunk} came before chunk 1")
        with open(staging, "wb" if chunk == 1 else "ab") as f:
            f.write(data)
            if chunk == -1:
                f.flush()
                os.fsync(f.fileno())
        if chunk != -1:
            staged = self._base_model(path, staging, "file")
            staged["name"] = name
            return staged
        _set_mode(staging, os.path.realpath(os_path))
        os.replace(staging, os.path.realpath(os_path))
        return self.get(path, content=False)

    def new_untitled(self, path: str, type: str = "", ext: str = "") -> Model:
        path = path.strip("/")
        self._require_dir(path)
        if ext and (not ext.startswith(".") or "/" in ext or len(ext) > 64):
            raise BadRequest(f"Invalid extension {ext[:64]!r}: it must look like '.txt'")
        if not type:
            type = "notebook" if ext == ".ipynb" else "file"
        if type == "directory":
            name = self.increment_filename("Untitled Folder", path, insert=" ")
            return self.save({"type": "directory"}, f"{path}/{name}")[0]
        if type == "notebook":
            name = self.increment_filename("Untitled.ipynb", path)
            return self.save({"type": "notebook", "content": new_notebook()}, f"{path}/{name}")[0]
        if type != "file":
            raise BadRequest(f"Unexpected model type: {type!r}")
        name = self.increment_filename("untitled" + ext, path)
        return self.save({"type": "file", "format": "text", "content": ""}, f"{path}/{name}")[0]

    def _require_dir(self, path: str) -> None:
        os_path = self.os_path(path)
        if os.path.isdir(os_path):
            return
        if os.path.lexists(os_path):
            raise BadRequest("Cannot POST to files, use PUT instead.")
        raise NotFound(f"No such directory: {path}")

    def increment_filename(self, filename: str, path: str = "", insert: str = "") -> str:
        """The first free name: Untitled.ipynb, Untitled1.ipynb ... (as jupyter_server)."""
        base, dot, ext = filename.rpartition(".")
        if ext != "ipynb":
            base, dot, ext = filename.partition(".")
        folder = self.os_path(path)
        for i in itertools.count():
            name = f"{base}{insert}{i}{dot}{ext}" if i else f"{base}{dot}{ext}"
            if not os.path.lexists(os.path.join(folder, name)):
                return name
        raise AssertionError("unreachable")

    def copy(self, from_path: str, to_path: str) -> Model:
        """Copy a file into directory to_path, as name-Copy1.ext (never onto a file: that
        would replace it unvalidated and with no checkpoint; PUT saves over one)."""
        from_path, to_path = from_path.strip("/"), to_path.strip("/")
        self._require_dir(to_path)
        src = self.os_path(from_path)
        if not os.path.exists(src):
            raise NotFound(f"No such file: {from_path}")
        if os.path.isdir(src):
            raise BadRequest("Can't copy directories")
        name = COPY_PAT.sub(".", from_path.rsplit("/", 1)[-1])
        to_path = f"{to_path}/{self.increment_filename(name, to_path, insert='-Copy')}"
        to_path = to_path.strip("/")
        atomic_copy(src, self.os_path(to_path, writing=True))
        return self.get(to_path, content=False)

    def rename(self, old_path: str, new_path: str) -> Model:
        old_path, new_path = old_path.strip("/"), new_path.strip("/")
        if old_path == new_path:
            return self.get(new_path, content=False)
        old, new = self.os_path(old_path, writing=True), self.os_path(new_path, writing=True)
        if not os.path.lexists(old):
            raise NotFound(f"No such file or directory: {old_path}")
        if os.path.lexists(new):
            raise Conflict(f"File already exists: {new_path}")
        if not os.path.isdir(os.path.dirname(new)):
            raise NotFound(f"No such directory: {os.path.dirname(new_path)}")
        if os.path.isdir(old) and (new_path + "/").startswith(old_path + "/"):
            raise BadRequest(f"Cannot move {old_path} into itself")
        os.rename(old, new)
        return self.get(new_path, content=False)

    def delete(self, path: str) -> None:
        path = path.strip("/")
        if not path:
            raise BadRequest("Cannot delete the notebook directory")
        os_path = self.os_path(path, writing=True)
        if not os.path.lexists(os_path):
            raise NotFound(f"File or directory does not exist: {path}")
        if os.path.isdir(os_path) and not os.path.islink(os_path):
            if [n for n in os.listdir(os_path) if n != CHECKPOINT_DIR]:
                raise BadRequest(f"Directory {path} not empty")
            shutil.rmtree(os_path)
        else:
            os.unlink(os_path)


def _decode(data: bytes, format: str | None, path: str) -> tuple[str, str]:
    if format != "base64":
        try:
            return data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            if format == "text":
                raise BadRequest(f"{path} is not UTF-8 encoded") from None
    return base64.b64encode(data).decode("ascii"), "base64"


def _encode(content: Any, format: str | None) -> bytes:
    if not isinstance(content, str):
        raise BadRequest("File content must be a string")
    if format == "text":
        try:
            return content.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("File content holds a lone surrogate: not Unicode text") from None
    if format == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise BadRequest("File content is not valid base64") from None
    raise BadRequest("Must specify format of file contents as 'text' or 'base64'")


def notebook_bytes(content: Any) -> bytes:
    """The notebook as nbformat writes it; BadRequest, and no other error, if it is not a
    valid v4 notebook (so a notebook failing here is never written over anything)."""
    _check_shape(content)
    nbformat = nbf()
    try:
        nb = nbformat.from_dict(_with_cell_ids(content))
        message = _validation_message(nb)
        if message:
            raise BadRequest(message)
        data: str = nbformat.writes(nb, version=4, allow_nan=False)
        return data.encode("utf-8")
    except BadRequest:
        raise
    except Exception as e:  # noqa: BLE001 - whatever nbformat chokes on is the body's fault
        raise BadRequest(f"Notebook is invalid: {e}"[:500]) from None


def _check_shape(content: Any) -> None:
    """What nbformat assumes before its schema is applied (it iterates cells, reads keys)."""
    if not isinstance(content, dict) or type(content.get("nbformat")) is not int:
        raise BadRequest("Notebook is invalid: not an nbformat 4 notebook")
    if content["nbformat"] != 4:
        raise BadRequest("Notebook is invalid: not an nbformat 4 notebook")
    try:
        check_value(content)
    except JSONInputError as e:
        raise BadRequest(f"Notebook is invalid: {e}") from None
    cells = content.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise BadRequest("Notebook is invalid: cells must be a list of objects")
    if not isinstance(content.get("metadata"), dict):
        raise BadRequest("Notebook is invalid: metadata must be an object")


def _with_cell_ids(content: dict[str, Any]) -> dict[str, Any]:
    """Give cells of a 4.5+ notebook an id where one is missing or taken, as nbformat's
    validate would (with a warning) in place; here on a copy, before validation."""
    minor = content.get("nbformat_minor")
    if not isinstance(minor, int) or minor < 5:
        return content
    seen: set[str] = set()
    cells = []
    for cell in content["cells"]:
        cid = cell.get("id")
        if not isinstance(cid, str) or cid in seen:
            cell = {**cell, "id": _new_cell_id(seen)}
        seen.add(cell["id"])
        cells.append(cell)
    return {**content, "cells": cells}


def _new_cell_id(seen: set[str]) -> str:
    while True:
        cid = os.urandom(4).hex()
        if cid not in seen:
            return cid


def _validation_message(nb: Any) -> str | None:
    nbformat = nbf()

    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        return f"Notebook is invalid: {str(e).splitlines()[0]}"[:500]
    except Exception as e:  # noqa: BLE001 - nbformat's validator assumes well-formed input
        return f"Notebook is invalid: {e}"[:500]
    return None


def _check_names(parts: list[str]) -> None:
    for part in parts:
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            raise BadRequest("A file name holds a lone surrogate: not Unicode text") from None
        if size > NAME_MAX:
            raise BadRequest(
                f"File name too long ({size} bytes; the limit is {NAME_MAX}): {part[:40]}..."
            )


def _staging_name(name: str) -> str:
    """Where a chunked upload of `name` collects: a hidden name that fits NAME_MAX."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".~{_stem(name)}.{digest}.upload"


def _stem(name: str) -> str:
    """The start of a name, at most TEMP_STEM bytes, cut between characters."""
    return os.fsencode(name)[:TEMP_STEM].decode("utf-8", "ignore")


def new_notebook() -> Model:
    return dict(nbf().v4.new_notebook())


def nbf() -> Any:
    """nbformat, imported on first use: it is heavy and many servers never open a notebook."""
    import nbformat

    return nbformat
