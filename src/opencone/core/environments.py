"""Saved environments: the state of a ``persistent`` computer, kept after it ends.

When a persistent computer ends (delete, expiry, server shutdown) its state is
packed into one archive, ``<data_dir>/environments/<env_id>.tar``:

- browser: the Chromium profile (cookies, localStorage, IndexedDB, service
  workers, history), after Chromium has exited cleanly; caches are left out
  (drivers/chromium/profiles.py);
- desktop: the home directory, the ``/workspace`` of its exec sandbox, and
  the profile of the desktop's own Chromium (saved as for a browser, when that
  browser is running at the end; an archive from before has no ``browser``
  part and restores with a fresh browser).

The environment's id is the id of the computer that first saved it. A computer
created with ``environment_id`` starts from that state; if it is persistent as
well, its state replaces the saved one when it ends (under the same id),
otherwise the saved state is left as it was. When a computer's first save
fails (over the storage cap, a timeout) the environment is still recorded, with
no archive, size 0, status ``not_saved`` and ``last_error`` saying why, so the
user sees it; creating a computer from it is a 409.

Saving is atomic: the archive is written to a temporary file in the same
directory, fsynced, then renamed over the previous one, so a crash or kill at
any moment leaves either the previous complete state or the new complete
state. At the next start, temporary files left by a crash are removed, and so
is an archive renamed into place just before a crash that left it without a
database row (its computer's end never finished; nobody can restore it).

In a fleet an environment moves between nodes (fleet/replica_storage.py): the
holder ``export``s its archive, the target ``import_archive``s it (streamed to a
temporary file, size-capped by the organisation's storage cap, then checked by
``check_archive`` as hostile bytes before it is renamed into place), and the
holder ``release``s it, unless a persistent computer made from it still runs
there (that one saves back at its end, so the environment must stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.config import Settings
from opencone.core.clock import Clock
from opencone.core.errors import Conflict, InvalidInput, NotFound, ServiceError, StartFailed
from opencone.core.store.models import EnvironmentRecord
from opencone.drivers.chromium import profiles

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar"
_TMP_MARK = ".tmp-"
SAVED = "saved"
NOT_SAVED = "not_saved"  # a first save failed: the row carries the reason, there is no archive

Keep = Callable[[Path, bool], bool]
ENV_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a computer's id: safe as a file name
PARTS = {"browser": ("profile",), "desktop": ("home", "workspace", "browser")}  # what ``pack`` writes per kind
MAX_MEMBERS = 500_000  # an imported archive's entries (a real profile has a few thousand)


class TooLarge(ServiceError):
    """An imported archive over the organisation's room under its storage cap."""

    status = 413


def _keep_all(_relative: Path, _is_dir: bool) -> bool:
    return True


# -- archives (blocking; run in a thread) ---------------------------------------------------
def pack(sources: dict[str, tuple[Path, Keep]], dest: Path) -> int:
    """Write ``sources`` (archive prefix -> (dir, filter)) to ``dest`` and fsync it; return its size."""
    with open(dest, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for prefix, (root, keep) in sources.items():
                tar.add(root, arcname=prefix, recursive=False)
                if not root.is_dir():
                    continue
                for dirpath, dirnames, filenames in os.walk(root):
                    here = Path(dirpath)
                    rel_dir = here.relative_to(root)
                    dirnames[:] = [d for d in dirnames if keep(rel_dir / d, True)]
                    for name in [*dirnames, *filenames]:
                        path = here / name
                        is_dir = name in dirnames
                        if not is_dir and not keep(rel_dir / name, False):
                            continue
                        try:
                            tar.add(path, arcname=f"{prefix}/{rel_dir / name}", recursive=False)
                        except (FileNotFoundError, PermissionError):
                            continue  # gone or unreadable meanwhile (a live desktop's files)
        raw.flush()
        os.fsync(raw.fileno())
    return dest.stat().st_size


def _safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None  # skip, never write outside ``dest``


def unpack(archive: Path, prefix: str, dest: Path, owner: tuple[int, int] | None = None) -> int:
    """Extract the ``prefix/`` part of ``archive`` into ``dest`` (made if missing); return how many
    entries it had (0: the archive has no such part)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r") as tar:
        members = []
        for m in tar.getmembers():
            if m.name == prefix or not m.name.startswith(prefix + "/"):
                continue
            if m.islnk():  # a hard link names its target by archive path: stripped of the prefix as well
                if not m.linkname.startswith(prefix + "/"):
                    continue  # a link into another part (never written by pack)
                m.linkname = m.linkname[len(prefix) + 1:]
            m.name = m.name[len(prefix) + 1:]
            members.append(m)
        tar.extractall(dest, members=members, filter=_safe)
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in [*dirnames, *filenames])]:
                with contextlib.suppress(OSError):
                    os.lchown(name, *owner)
    return len(members)


def check_archive(path: Path, kind: str) -> None:
    """Refuse (InvalidInput) an archive that ``pack`` could not have written for ``kind``: it comes from
    another node, so it is hostile until shown otherwise. Uncompressed tar only (a compressed one could
    expand past the cap), entries under the kind's parts only, regular files, directories, links and pipes
    only (no devices, no sparse files), each entry's data inside the file, and every name and link target
    inside its part as ``unpack``'s filter resolves them."""
    parts, total = PARTS[kind], path.stat().st_size
    with tempfile.TemporaryDirectory() as probe:
        try:
            with tarfile.open(path, mode="r:") as tar:
                for count, member in enumerate(tar, 1):
                    _check_member(member, parts, total, probe, count)
        except (tarfile.TarError, EOFError, UnicodeError) as exc:
            raise InvalidInput(f"the archive is not a valid uncompressed tar: {exc}") from exc


def _check_member(member: tarfile.TarInfo, parts: tuple[str, ...], total: int, probe: str, count: int) -> None:
    if count > MAX_MEMBERS:
        raise InvalidInput(f"the archive has more than {MAX_MEMBERS} entries")
    top, _, rest = member.name.partition("/")
    if top not in parts:
        raise InvalidInput(f"archive entry {member.name[:200]!r} is outside {', '.join(parts)}")
    # a FIFO is what pack writes for a user's named pipe (unpack's filter skips it); a device it never writes
    if member.issparse() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()
                                 or member.isfifo()):
        raise InvalidInput(f"archive entry {member.name[:200]!r} is not a file, directory, link or pipe")
    if member.isfile() and member.offset_data + member.size > total:
        raise InvalidInput(f"archive entry {member.name[:200]!r} runs past the end of the archive")
    if not rest:
        if not member.isdir():
            raise InvalidInput(f"archive entry {top!r} must be a directory")
        return
    # as ``unpack`` extracts it: the prefix stripped (of a hard link's target too), into a directory
    seen = copy.copy(member)
    seen.name = rest
    if member.isfifo():  # unpack's filter skips it; its name is still checked
        seen.type = tarfile.REGTYPE
    if member.islnk():
        link_top, _, link_rest = member.linkname.partition("/")
        if link_top != top or not link_rest:
            raise InvalidInput(f"archive entry {member.name[:200]!r} is a hard link outside {top}")
        seen.linkname = link_rest
    try:
        tarfile.data_filter(seen, os.path.join(probe, top))
    except tarfile.FilterError as exc:
        raise InvalidInput(f"archive entry {member.name[:200]!r} is refused: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _import_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The record fields of an imported environment, from its exporter's word (checked, not trusted)."""
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in PARTS:
        raise InvalidInput(f"kind must be one of {', '.join(PARTS)}", field="kind")
    times = {}
    for name in ("created_at", "saved_at"):
        try:
            times[name] = datetime.fromisoformat(str(meta.get(name)))
        except ValueError:
            times[name] = None
        if times[name] is None or times[name].tzinfo is None:
            raise InvalidInput(f"{name} must be an ISO 8601 time with its UTC offset", field=name)
    context, saved_by = meta.get("context_id"), meta.get("saved_by")
    if context is not None and (not isinstance(context, str) or len(context) > 256):
        raise InvalidInput("context_id must be a string of at most 256 characters", field="context_id")
    if saved_by is not None and (not isinstance(saved_by, str) or not ENV_ID.match(saved_by)):
        raise InvalidInput("saved_by must be a computer id", field="saved_by")
    return {"kind": kind, **times, "context_id": context, "saved_by": saved_by}


async def _receive(chunks: AsyncIterator[bytes], dest: Path, room: int,
                   too_large: Callable[[int, int], ServiceError]) -> int:
    """``chunks`` written to ``dest`` and fsynced, refused past ``room`` bytes; their size."""
    size = 0
    with open(dest, "wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > room:
                raise too_large(size, room)
            await asyncio.to_thread(out.write, chunk)
        await asyncio.to_thread(os.fsync, out.fileno())
    return size


def has_state(row: EnvironmentRecord) -> bool:
    """Whether anything was ever saved: an archive is never 0 bytes (tar's end blocks alone are 1 KiB)."""
    return row.size_bytes > 0


def environment_dict(row: EnvironmentRecord) -> dict[str, Any]:
    saved = has_state(row)
    return {
        "id": row.id, "kind": row.kind, "status": SAVED if saved else NOT_SAVED, "created_at": row.created_at,
        "saved_at": row.saved_at if saved else None, "size_bytes": row.size_bytes, "context_id": row.context_id,
        "saved_by": row.saved_by, "last_error": row.last_error,
    }


class EnvironmentService:
    def __init__(self, settings: Settings, sessions: async_sessionmaker,  # type: ignore[type-arg]
                 clock: Clock, browsers: Any, workspaces: Any) -> None:
        self.settings = settings
        self.root = (settings.data_dir / "environments").resolve()
        self._sessions = sessions
        self._clock = clock
        self._browsers = browsers
        self._workspaces = workspaces
        self._locks: dict[str, asyncio.Lock] = {}
        self.other_usage: Callable[[str], Awaitable[int]] | None = None  # recordings (set by the runtime)

    async def start(self) -> None:
        """Make the directory and clean up after a crash (the database is migrated by now).

        Removed: temporary files of interrupted saves, and archives without a row (renamed
        into place by a save whose row was never written). An archive whose row exists is
        kept even if the row's size is stale (the crash fell between the rename and the row
        update); its size is corrected so the storage cap counts what is on disk.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        async with self._sessions() as s:
            rows = {r.id: r.size_bytes for r in (await s.execute(select(EnvironmentRecord))).scalars()}
        sizes: dict[str, int] = {}
        for path in self.root.iterdir():
            if _TMP_MARK in path.name:
                log.warning("removing %s, left by an interrupted save", path.name)
                path.unlink(missing_ok=True)
            elif path.name.endswith(ARCHIVE_SUFFIX) and path.is_file():
                env_id = path.name[: -len(ARCHIVE_SUFFIX)]
                if env_id not in rows:
                    log.warning("removing %s: no environment records it (a save cut short by a crash)", path.name)
                    path.unlink(missing_ok=True)
                elif (size := path.stat().st_size) != rows[env_id]:
                    sizes[env_id] = size
        if sizes:
            async with self._sessions() as s, s.begin():
                for env_id, size in sizes.items():
                    row = await s.get(EnvironmentRecord, env_id)
                    if row is not None:
                        log.warning("environment %s: size %d -> %d bytes, as on disk", env_id, row.size_bytes, size)
                        row.size_bytes = size

    def path(self, env_id: str) -> Path:
        return self.root / f"{env_id}{ARCHIVE_SUFFIX}"

    # -- records --------------------------------------------------------------------------
    async def _get(self, org_id: str, env_id: str) -> EnvironmentRecord | None:
        async with self._sessions() as s:
            row = await s.get(EnvironmentRecord, env_id)
        return row if row is not None and row.org_id == org_id else None

    async def get(self, org_id: str, env_id: str) -> dict[str, Any]:
        row = await self._get(org_id, env_id)
        if row is None:
            raise NotFound(f"no saved environment {env_id!r}", field="environment_id")
        return environment_dict(row)

    async def usage(self, org_id: str) -> int:
        """The organisation's stored bytes under its one storage cap: saved environments, and whatever
        else the runtime counts there (recordings: ``other_usage``)."""
        async with self._sessions() as s:
            total = (await s.execute(
                select(func.coalesce(func.sum(EnvironmentRecord.size_bytes), 0))
                .where(EnvironmentRecord.org_id == org_id)
            )).scalar_one()
        return int(total) + (await self.other_usage(org_id) if self.other_usage is not None else 0)

    async def list(self, org_id: str, context_id: str | None = None) -> list[dict[str, Any]]:
        q = select(EnvironmentRecord).where(EnvironmentRecord.org_id == org_id)
        if context_id is not None:
            q = q.where(EnvironmentRecord.context_id == context_id)
        async with self._sessions() as s:
            rows = (await s.execute(q.order_by(EnvironmentRecord.created_at))).scalars().all()
        return [environment_dict(r) for r in rows]

    async def delete(self, org_id: str, env_id: str) -> None:
        async with self._lock(env_id):
            if await self._get(org_id, env_id) is None:
                raise NotFound(f"no saved environment {env_id!r}")
            async with self._sessions() as s, s.begin():
                await s.execute(delete(EnvironmentRecord).where(EnvironmentRecord.id == env_id))
            self.path(env_id).unlink(missing_ok=True)
        log.info("environment %s deleted", env_id)

    # -- moving between nodes (fleet) -----------------------------------------------------
    async def export(self, org_id: str, env_id: str) -> tuple[dict[str, Any], IO[bytes], int]:
        """The organisation's environment for another node: its record (as ``import_archive`` takes it),
        its archive opened for reading and its size. The open file keeps the state it had even if a save
        renames a newer archive over it meanwhile."""
        row = await self._get(org_id, env_id) if ENV_ID.match(env_id) else None
        if row is None:
            raise NotFound(f"no saved environment {env_id!r}")
        if not has_state(row):
            raise Conflict(f"environment {env_id} has nothing saved: {row.last_error}")
        try:
            raw = await asyncio.to_thread(open, self.path(env_id), "rb")
        except FileNotFoundError as exc:
            raise Conflict(f"the saved state of environment {env_id} is missing on this server") from exc
        size = os.fstat(raw.fileno()).st_size
        meta = {"kind": row.kind, "created_at": row.created_at.isoformat(), "saved_at": row.saved_at.isoformat(),
                "context_id": row.context_id, "saved_by": row.saved_by}
        return meta, raw, size

    async def import_archive(self, org_id: str, env_id: str, meta: dict[str, Any],
                             chunks: AsyncIterator[bytes], declared: int | None) -> dict[str, Any]:
        """Take the environment another node exported: streamed into a temporary file (at most the
        organisation's room under its storage cap), checked (``check_archive``), renamed into place and
        recorded. Replaces this node's copy of the same id, if any (a move back)."""
        if not ENV_ID.match(env_id):
            raise InvalidInput(f"{env_id[:80]!r} is not an environment id", field="environment_id")
        fields = _import_fields(meta)
        existing = await self._get_any(env_id)
        if existing is not None and existing.org_id != org_id:
            raise Conflict(f"environment {env_id} exists here for another organisation")
        room = self._room(await self.usage(org_id), existing)
        if declared is not None and declared > room:
            raise self._too_large(declared, room)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{env_id}{ARCHIVE_SUFFIX}{_TMP_MARK}{secrets.token_hex(4)}"
        try:
            size = await _receive(chunks, tmp, room, self._too_large)
            await asyncio.to_thread(check_archive, tmp, fields["kind"])
            async with self._lock(env_id):
                existing = await self._get_any(env_id)
                room = self._room(await self.usage(org_id), existing)
                if size > room:  # a save of the organisation's landed meanwhile
                    raise self._too_large(size, room)
                await asyncio.to_thread(os.replace, tmp, self.path(env_id))
                await asyncio.to_thread(_fsync_dir, self.root)
                async with self._sessions() as s, s.begin():
                    row = await s.get(EnvironmentRecord, env_id)
                    if row is None:
                        row = EnvironmentRecord(id=env_id, org_id=org_id, path=self.path(env_id).name)
                        s.add(row)
                    for name, value in {**fields, "size_bytes": size, "last_error": None}.items():
                        setattr(row, name, value)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        log.info("environment %s imported: %d bytes", env_id, size)
        return await self.get(org_id, env_id)

    async def release(self, org_id: str, env_id: str, in_use: Callable[[str], bool]) -> None:
        """Drop this node's copy once another node holds the environment; refused (409) while a persistent
        computer made from it runs here: it saves back into it at its end."""
        async with self._lock(env_id):
            if await self._get(org_id, env_id) is None:
                raise NotFound(f"no saved environment {env_id!r}")
            if in_use(env_id):
                raise Conflict(f"a persistent computer of environment {env_id} runs on this node and saves "
                               "back into it when it ends, so the environment stays here until then; retry "
                               "after it ended", in_use=True)
            async with self._sessions() as s, s.begin():
                await s.execute(delete(EnvironmentRecord).where(EnvironmentRecord.id == env_id))
            self.path(env_id).unlink(missing_ok=True)
        log.info("environment %s released: another node holds it now", env_id)

    async def _get_any(self, env_id: str) -> EnvironmentRecord | None:
        async with self._sessions() as s:
            return await s.get(EnvironmentRecord, env_id)

    def _room(self, used: int, existing: EnvironmentRecord | None) -> int:
        """What an import may take under the cap (a copy it replaces frees its bytes)."""
        return self.settings.storage_cap_bytes - used + (existing.size_bytes if existing is not None else 0)

    def _too_large(self, size: int, room: int) -> TooLarge:
        return TooLarge(f"the archive's {size} bytes do not fit: this organisation has {max(room, 0)} bytes left "
                        f"under its storage cap of {self.settings.storage_cap_bytes} bytes on this node "
                        "(OPENCONE_STORAGE_CAP_BYTES)", room_bytes=max(room, 0))

    def _lock(self, env_id: str) -> asyncio.Lock:
        return self._locks.setdefault(env_id, asyncio.Lock())

    # -- create ---------------------------------------------------------------------------
    async def check_create(self, org_id: str, spec: Any) -> None:
        """Before anything starts: the environment exists for this org and fits; the org has room."""
        if spec.environment_id is not None:
            row = await self._get(org_id, spec.environment_id)
            if row is None:
                raise NotFound(f"no saved environment {spec.environment_id!r}; list them with "
                               "GET /computers?type=persistent", field="environment_id")
            if row.kind != spec.kind:
                raise InvalidInput(f"environment {row.id} is a saved {row.kind}, not a {spec.kind}",
                                   field="environment_id")
            if not has_state(row):
                raise Conflict(f"environment {row.id} cannot be restored: nothing was saved: {row.last_error}; "
                               f"delete it with DELETE /environments/{row.id}", field="environment_id",
                               last_error=row.last_error)
            if not self.path(row.id).is_file():
                raise Conflict(f"the saved state of environment {row.id} is missing on this server",
                               field="environment_id")
        if spec.persistent:
            cap = self.settings.storage_cap_bytes
            used = await self.usage(org_id)
            if used >= cap:
                raise InvalidInput(
                    f"saved environments and recordings of this organisation use {used} bytes, at or over the "
                    f"cap of {cap} bytes (OPENCONE_STORAGE_CAP_BYTES); delete some with "
                    "DELETE /environments/{id} or DELETE /recordings/{id} before creating a persistent computer",
                    field="persistent", used_bytes=used, cap_bytes=cap,
                )

    async def launch_browser(self, spec: Any) -> Any:
        """A browser on a fresh copy of the saved profile (cold: a pool browser has its own profile)."""
        profile = self._browsers.new_profile_dir()
        archive = self.path(spec.environment_id)
        try:
            await asyncio.to_thread(unpack, archive, "profile", profile, self._browsers.profile_owner)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, profile, True)
            raise
        computer = await self._browsers.create_with_profile(
            spec.display, profile, use_advanced_proxy=bool(spec.options.get("use_advanced_proxy")),
            user_agent=self._browsers.user_agent_for(spec.options.get("stealth")))
        await profiles.restore_session_cookies(computer)
        return computer

    async def restore_desktop(self, comp: Any) -> None:
        """Put a saved home, /workspace and browser profile into a just-created desktop."""
        archive = self.path(comp.spec.environment_id)
        desktop = comp.driver
        owner = desktop.owner  # the sandbox's user: its terminal and browser write there
        try:
            await asyncio.to_thread(unpack, archive, "home", desktop.home, owner)
            workspace = self._workspaces.ensure(comp.sandbox_id)
            await asyncio.to_thread(unpack, archive, "workspace", workspace, owner)
            profile = desktop.restored_profile
            if await asyncio.to_thread(unpack, archive, "browser", profile, owner):
                # the desktop came with a browser on a fresh profile: swap it for one on the saved profile
                browser = await desktop.restart_browser_with_profile(profile)
                await profiles.restore_session_cookies(browser)
            else:  # saved before desktops saved their browser, or with the browser closed
                await asyncio.to_thread(shutil.rmtree, profile, True)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._workspaces.remove(comp.sandbox_id)
            log.exception("restoring environment %s into %s failed", comp.spec.environment_id, comp.id)
            raise StartFailed(f"could not restore environment {comp.spec.environment_id}: {exc}") from exc

    # -- save -----------------------------------------------------------------------------
    async def save(self, comp: Any) -> None:
        """Save ``comp``'s state under its environment id, bounded in time; errors are logged."""
        env_id = comp.spec.environment_id or comp.id
        try:
            async with asyncio.timeout(self.settings.environment_save_timeout_seconds):
                await self._save(comp, env_id)
        except Exception as exc:
            log.exception("saving computer %s into environment %s failed", comp.id, env_id)
            await self._record_error(comp, env_id, f"save from {comp.id} failed: {exc or type(exc).__name__}")

    async def _sources(self, comp: Any) -> dict[str, tuple[Path, Keep]]:
        if comp.kind == "browser":
            profile = await profiles.stop_for_save(comp.driver, self.settings.environment_save_grace_seconds)
            return {"profile": (profile, profiles.keep)}
        sources: dict[str, tuple[Path, Keep]] = {}
        if comp.driver.home.is_dir():  # (a desktop without a terminal has none)
            sources["home"] = (comp.driver.home, _keep_all)
        workspace = self._workspaces.path(comp.sandbox_id)
        if workspace.is_dir():
            sources["workspace"] = (workspace, _keep_all)
        # the desktop's own Chromium keeps its profile outside the home (drivers/desktop/computer.py);
        # a running one exits cleanly first, one its user closed left its profile behind as it is
        desktop = comp.driver
        await desktop.browser_settled()  # a browser whose window was just closed is still writing
        browser = desktop.browser
        if browser is not None and browser.alive:
            profile = await profiles.stop_for_save(browser, self.settings.environment_save_grace_seconds)
            sources["browser"] = (profile, profiles.keep)
        elif desktop.browser_profile.is_dir():
            sources["browser"] = (desktop.browser_profile, profiles.keep)
        return sources

    async def _save(self, comp: Any, env_id: str) -> None:
        started = asyncio.get_running_loop().time()
        sources = await self._sources(comp)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{env_id}{ARCHIVE_SUFFIX}{_TMP_MARK}{secrets.token_hex(4)}"
        try:
            size = await asyncio.to_thread(pack, sources, tmp)
            async with self._lock(env_id):
                async with self._sessions() as s:
                    row = await s.get(EnvironmentRecord, env_id)
                others = await self.usage(comp.org_id) - (row.size_bytes if row is not None else 0)
                cap = self.settings.storage_cap_bytes
                if others + size > cap:
                    msg = (f"the save from {comp.id} was refused: its {size} bytes would take the organisation to "
                           f"{others + size} bytes, over its cap of {cap} bytes "
                           "(OPENCONE_STORAGE_CAP_BYTES)")
                    if row is not None and has_state(row):
                        msg += "; the previous state is kept"
                    log.warning("environment %s (from computer %s): %s", env_id, comp.id, msg)
                    await self._record_error(comp, env_id, msg)
                    return
                if self.settings.test_save_delay_seconds:  # test only: widen the window for a kill
                    await asyncio.sleep(self.settings.test_save_delay_seconds)
                final = self.path(env_id)
                await asyncio.to_thread(os.replace, tmp, final)
                await asyncio.to_thread(_fsync_dir, self.root)
                await self._upsert(comp, env_id, size, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        log.info("computer %s saved into environment %s: %d bytes in %.0f ms", comp.id, env_id, size,
                 (asyncio.get_running_loop().time() - started) * 1000)

    async def _upsert(self, comp: Any, env_id: str, size: int, final: Path) -> None:
        now: datetime = self._clock.now()
        async with self._sessions() as s, s.begin():
            row = await s.get(EnvironmentRecord, env_id)
            if row is None:
                s.add(EnvironmentRecord(
                    id=env_id, org_id=comp.org_id, kind=comp.kind, created_at=now, saved_at=now, size_bytes=size,
                    path=final.name, context_id=comp.spec.context_id, saved_by=comp.id, last_error=None,
                ))
            else:
                row.saved_at, row.size_bytes, row.saved_by, row.last_error = now, size, comp.id, None
                if comp.spec.context_id is not None:
                    row.context_id = comp.spec.context_id

    async def _record_error(self, comp: Any, env_id: str, message: str) -> None:
        """Put a failed save's reason on the environment; on a first save, record the environment
        itself (no archive, size 0) so the user sees the error instead of nothing."""
        now: datetime = self._clock.now()
        try:
            async with self._sessions() as s, s.begin():
                row = await s.get(EnvironmentRecord, env_id)
                if row is not None:
                    row.last_error = message[:1024]
                else:
                    s.add(EnvironmentRecord(
                        id=env_id, org_id=comp.org_id, kind=comp.kind, created_at=now, saved_at=now, size_bytes=0,
                        path="", context_id=comp.spec.context_id, saved_by=comp.id, last_error=message[:1024],
                    ))
        except Exception:
            log.exception("could not record the failed save of environment %s", env_id)
