"""Time to save and to restore a browser profile of a few MB, beside the raw cost in the same run.

Makes a realistic profile (a real Chromium profile, padded with a few MB of
localStorage/IndexedDB-like files and a cache that is skipped), then times:

- raw: ``shutil.copytree`` of the whole directory, and ``tar cf`` of it;
- save: ``environments.pack`` (filtered tar + fsync) and the atomic rename;
- restore: ``environments.unpack`` into a fresh directory.

Usage: /tmp/venv/bin/python bench/bench_environments.py [MB]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opencone.core.environments import _keep_all, pack, unpack
from opencone.drivers.chromium import profiles


def make_profile(root: Path, mb: int) -> None:
    rnd = os.urandom
    for sub, files in {"Default/Local Storage/leveldb": 6, "Default/IndexedDB/http_x.indexeddb.leveldb": 6,
                       "Default/Service Worker/Database": 3, "Default": 4}.items():
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (d / f"{i:06d}.ldb").write_bytes(rnd(mb * 1024 * 1024 // 19))
    cache = root / "Default" / "Cache" / "Cache_Data"
    cache.mkdir(parents=True)
    for i in range(50):
        (cache / f"f_{i:06d}").write_bytes(rnd(40 * 1024))


def timed(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        prof = t / "profile"
        make_profile(prof, mb)
        size = sum(p.stat().st_size for p in prof.rglob("*") if p.is_file())
        n = 0

        def raw_copy() -> None:
            nonlocal n
            n += 1
            shutil.copytree(prof, t / f"copy{n}")

        def raw_tar() -> None:
            subprocess.run(["tar", "cf", str(t / "raw.tar"), "-C", str(prof), "."], check=True)

        def save() -> None:
            tmpfile = t / "env.tar.tmp-x"
            pack({"profile": (prof, profiles.keep)}, tmpfile)
            os.replace(tmpfile, t / "env.tar")

        def save_unfiltered() -> None:
            pack({"profile": (prof, _keep_all)}, t / "all.tar")

        def restore() -> None:
            nonlocal n
            n += 1
            unpack(t / "env.tar", "profile", t / f"restored{n}")

        print(f"profile: {size / 1e6:.1f} MB on disk ({len(list(prof.rglob('*')))} entries, 2 MB of cache)")
        print(f"raw copytree          {timed(raw_copy):8.1f} ms")
        print(f"raw tar cf            {timed(raw_tar):8.1f} ms")
        print(f"save (filtered+fsync) {timed(save):8.1f} ms  -> {(t / 'env.tar').stat().st_size / 1e6:.1f} MB")
        print(f"save, no filter       {timed(save_unfiltered):8.1f} ms")
        print(f"restore (unpack)      {timed(restore):8.1f} ms")


if __name__ == "__main__":
    main()
