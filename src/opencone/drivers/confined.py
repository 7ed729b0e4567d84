"""Files under a root that someone else writes: a computer's downloads and ``/workspace``.

The server (often root) reads and writes there on behalf of an API key, while the
computer's own processes (a shell command, the browser) may have planted anything
in the tree: symlinks to ``/etc/shadow``, FIFOs that block a reader forever, a
directory swapped for a link between a check and a use. So nothing here resolves a
path string: every step opens one component relative to its parent's descriptor with
``O_NOFOLLOW`` (a link anywhere on the way is refused, not followed), a file is opened
``O_NONBLOCK`` and must be a regular file by ``fstat`` of what was opened, and a new
file is written under a temporary name and renamed into place (a rename replaces a
link planted at the name rather than writing through it).

Functions here block (file system calls); the services run them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_DEPTH = 32
MAX_LISTED = 5000  # entries one listing returns at most (then ``truncated``)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".opencone-upload-"


class PathRefused(Exception):
    """The path is not allowed (malformed, or it leads through a link): the request's fault."""


class LinkRefused(PathRefused):
    """The path leads through (or to) a symbolic link, which is never followed."""


class NotThere(Exception):
    """Nothing at that path."""


class NotAFile(Exception):
    """Something at that path, but not a regular file (a directory, a FIFO…)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class TooLarge(Exception):
    pass


def split(path: str) -> list[str]:
    """The components of a relative path, or PathRefused saying what is wrong with it."""
    if not isinstance(path, str) or not path.strip("/"):
        raise PathRefused("the path is empty; name a file relative to the directory's root")
    if len(path) > MAX_PATH_CHARS:
        raise PathRefused(f"the path is {len(path)} characters long; at most {MAX_PATH_CHARS} are allowed")
    if "\x00" in path:
        raise PathRefused("the path contains a NUL character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRefused("the path contains a lone UTF-16 surrogate; paths must be valid Unicode") from None
    if path.startswith("/"):
        raise PathRefused("absolute paths are not allowed; paths are relative to the directory's root "
                          "(e.g. report.pdf or sub/report.pdf)")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise PathRefused("'.' and '..' are not allowed in a path; name the file from the directory's root")
    if len(parts) > MAX_DEPTH:
        raise PathRefused(f"the path is {len(parts)} directories deep; at most {MAX_DEPTH} are allowed")
    for p in parts:
        if len(p.encode()) > MAX_NAME_BYTES:
            raise PathRefused(f"a name in the path is {len(p.encode())} bytes long; at most {MAX_NAME_BYTES} "
                              "are allowed")
    return parts


def _open_dir_at(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise NotThere(f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = _kind_at(parent, name)
            if kind == "symlink":
                raise LinkRefused(f"{shown} is a symbolic link; links are not followed in a computer's files") from None
            raise NotAFile(f"{shown} is not a directory", kind) from None
        raise


def _kind_at(parent: int, name: str) -> str:
    try:
        return kind_of(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return "missing"


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def open_root(root: Path) -> int:
    """The root itself, refused if it is (now) a link: its owner's processes may write its parent."""
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotThere("the directory does not exist yet") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LinkRefused("the directory's root is not a directory (a link?); refused") from None
        raise


@contextlib.contextmanager
def directory(root: Path, parts: list[str], *, create: bool = False,
              owner: tuple[int, int] | None = None) -> Iterator[int]:
    """A descriptor of the directory ``root/parts…`` (made, owned by ``owner``, with ``create``)."""
    fd = open_root(root)
    try:
        for i, name in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            sub = _open_dir_at(fd, name, shown)
            os.close(fd)
            fd = sub
        yield fd
    finally:
        os.close(fd)


@dataclass(slots=True)
class Opened:
    """A regular file opened for reading: its descriptor (the caller closes it), name and size."""

    fd: int
    name: str
    path: str
    size: int
    modified: float


def open_file(root: Path, parts: list[str]) -> Opened:
    """Open ``root/parts…`` for reading; never through a link, never a FIFO or device."""
    with directory(root, parts[:-1]) as parent:
        name, shown = parts[-1], "/".join(parts)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise NotThere(f"{shown} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkRefused(f"{shown} is a symbolic link; links are not followed in a computer's files") from None
            if exc.errno == errno.ENXIO:  # a FIFO with no writer, a socket
                raise NotAFile(f"{shown} is not a regular file", "other") from None
            raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = kind_of(st.st_mode)
        raise NotAFile(f"{shown} is a {kind}, not a file", kind)
    os.set_blocking(fd, True)
    return Opened(fd, name, shown, st.st_size, st.st_mtime)


def read_chunks(fd: int, size: int = 256 * 1024) -> Iterator[bytes]:
    while chunk := os.read(fd, size):
        yield chunk


@dataclass(slots=True)
class Entry:
    name: str
    path: str
    type: str
    size: int
    modified: float


def listing(root: Path, parts: list[str]) -> tuple[list[Entry], bool]:
    """Every entry under ``root/parts…`` (depth first, links listed as links and never entered),
    at most MAX_LISTED; and whether there were more."""
    out: list[Entry] = []
    prefix = "/".join(parts)

    def walk(fd: int, rel: str, depth: int) -> bool:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith(TEMP_PREFIX):
                continue  # an upload under way
            if len(out) >= MAX_LISTED:
                return False
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            path = f"{rel}/{e.name}" if rel else e.name
            kind = kind_of(st.st_mode)
            out.append(Entry(_text(e.name), _text(path), kind, st.st_size if kind == "file" else 0, st.st_mtime))
            if kind == "directory" and depth < MAX_DEPTH:
                try:
                    sub = os.open(e.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a link meanwhile, or unreadable: not entered
                try:
                    if not walk(sub, path, depth + 1):
                        return False
                finally:
                    os.close(sub)
        return True

    with directory(root, parts) as fd:
        complete = walk(fd, prefix, len(parts))
    return out, not complete


def _text(name: str) -> str:
    """A name as JSON can carry it: bytes that are not UTF-8 (os.fsdecode's surrogates) as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(slots=True)
class Written:
    path: str
    size: int


class Upload:
    """A new file written under a temporary name in its directory, renamed into place by ``commit``.

    ``owner``: who owns the file (the computer's sandbox user, so its commands can change it)."""

    def __init__(self, root: Path, parts: list[str], limit: int, owner: tuple[int, int] | None) -> None:
        self.parts, self.limit, self.owner, self.size = parts, limit, owner, 0
        self._dirs = directory(root, parts[:-1], create=True, owner=owner)
        self.parent = self._dirs.__enter__()
        try:
            existing = _kind_at(self.parent, parts[-1])
            if existing == "directory":
                raise NotAFile(f"{'/'.join(parts)} is a directory; a file cannot replace it", existing)
            self.temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o644, dir_fd=self.parent)
        except BaseException:
            self._dirs.__exit__(None, None, None)
            raise

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"the upload is over {self.limit} bytes, the most allowed")
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self) -> Written:
        if self.owner is not None:
            os.fchown(self.fd, *self.owner)
        os.close(self.fd)
        self.fd = -1
        try:
            os.rename(self.temp, self.parts[-1], src_dir_fd=self.parent, dst_dir_fd=self.parent)
        finally:
            self.close()
        return Written("/".join(self.parts), self.size)

    def close(self) -> None:
        """Drop the temporary file (after a failure) and the directory's descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.parent >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.parent)
            self._dirs.__exit__(None, None, None)
            self.parent = -1


def remove(root: Path, parts: list[str]) -> str:
    """Delete the file (or link: the link itself, never its target) or empty directory; its kind."""
    with directory(root, parts[:-1]) as parent:
        name, shown = parts[-1], "/".join(parts)
        kind = _kind_at(parent, name)
        if kind == "missing":
            raise NotThere(f"{shown} does not exist")
        try:
            if kind == "directory":
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise NotAFile(f"{shown} is a directory that is not empty; delete what is in it first",
                               kind) from None
            raise
        return kind


def unique_names(wanted: str) -> Iterator[str]:
    """``wanted``, then ``wanted (1)``… before the extension, as a desktop browser names a second copy."""
    stem, dot, ext = wanted.rpartition(".")
    if not stem:
        stem, dot, ext = wanted, "", ""
    yield wanted
    for n in range(1, 1000):
        yield f"{stem} ({n}){dot}{ext}"
