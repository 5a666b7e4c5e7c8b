"""Atomic output directories: nothing half-written, nothing overwritten without force."""

import os
import shutil
import tempfile

from ..errors import QSMInputError


class OutputDirectory:
    """Stage outputs in a hidden folder and move them into place only on success.

    Use as a context manager. Inside it, write every output to
    ``stage.path(relative_name)``. On a clean exit each file is renamed into
    ``out_dir`` (an atomic rename per file); on an exception, a Ctrl-C or a
    cancellation the staging folder is removed and ``out_dir`` is left as it was.

    Parameters
    ----------
    out_dir : path
        Destination folder, created if missing.
    names : iterable of str
        Relative paths this run will write; any that already exists is refused
        unless ``force`` is true.
    force : bool
        Overwrite existing outputs.
    """

    def __init__(self, out_dir, names, *, force=False):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.names = [os.path.normpath(n) for n in names]
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise QSMInputError(f"{out_dir}: exists and is not a folder; choose another output folder")
        existing = [n for n in self.names if os.path.exists(os.path.join(self.out_dir, n))]
        if existing and not force:
            shown = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
            raise QSMInputError(f"{out_dir}: already holds {shown}; add --force to overwrite, "
                                "or choose another output folder")
        self._created = None
        self._staging = None

    def path(self, name):
        """Where to write ``name`` while the run is in progress."""
        target = os.path.join(self._staging, os.path.normpath(name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return target

    def __enter__(self):
        if not os.path.isdir(self.out_dir):
            top = self.out_dir
            while not os.path.isdir(os.path.dirname(top)):
                top = os.path.dirname(top)
            self._created = top
            os.makedirs(self.out_dir)
        self._staging = tempfile.mkdtemp(prefix=".qsm-partial-", dir=self.out_dir)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            if exc_type is not None and self._created and not _has_files(self._created):
                shutil.rmtree(self._created, ignore_errors=True)
        return False

    def _commit(self):
        for root, _dirs, files in os.walk(self._staging):
            for f in files:
                src = os.path.join(root, f)
                dst = os.path.join(self.out_dir, os.path.relpath(src, self._staging))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)


def _has_files(folder):
    return any(files for _root, _dirs, files in os.walk(folder))
