"""JobFiles: each embedded job's files (the uploads, the latest preview, the result) in DATA_DIR/jobs/<id>/,
written atomically (a temp file in the same folder, then a rename: readers never see a part)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path

from app.style.jobs import ORPHAN_DIR_AGE_S, PREVIEW_FILE, now


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync-free, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


class JobFiles:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / job_id

    def write_inputs(self, job_id: str, content: tuple[str, bytes], styles: list[dict]) -> None:
        """A new job's folder with its content photo and uploaded paintings; FileExistsError for a used id."""
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        atomic_write(folder / content[0], content[1])
        for style in styles:
            if "data" in style:
                atomic_write(folder / style["file"], style["data"])

    def read(self, job_id: str, name: str) -> bytes | None:
        """One of a job's files; None when it is not there."""
        try:
            return (self.job_dir(job_id) / name).read_bytes()
        except (OSError, ValueError):
            return None

    def write_running(self, job_id: str, name: str, data: bytes) -> bool:
        """Write a file of a running job; False when its folder is gone (deleted meanwhile)."""
        try:
            atomic_write(self.job_dir(job_id) / name, data)
            return True
        except FileNotFoundError:
            return False

    def unlink(self, job_id: str, name: str = PREVIEW_FILE) -> None:
        with suppress(OSError):
            (self.job_dir(job_id) / name).unlink()

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_strays(self, known_ids) -> None:
        """Folders of no known job (left by a crash between writing the files and the row), once they are older
        than ORPHAN_DIR_AGE_S, so a submit in progress keeps its folder. `known_ids` is called only when there are
        folders at all."""
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return
        if not folders:
            return
        known = known_ids()
        limit = now() - ORPHAN_DIR_AGE_S
        for folder in folders:
            with suppress(OSError):
                if folder.name not in known and folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)
