"""Where the tools write: guarded output paths and atomic output folders.

Every file that a ``qsm`` command writes goes through this module:

- output folders are resolved, symbolic links included, and every file
  written must stay inside its declared output folder;
- BIDS labels (``--subject``, ``--session``, ``--participant-label``) follow the
  BIDS label grammar (letters and digits only), so a label cannot name a path;
- an input is never overwritten, with or without ``--force``;
- derivatives never go into the raw folders of the BIDS dataset they come from;
- outputs are staged and moved into place only when the run succeeds
  (:class:`OutputDirectory`), while the run holds the folder's lock
  (:class:`~qsmlib.io.lock.FolderLock`): a second run into the same folder is
  refused, and staging folders of killed runs are removed.
"""

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile

from ..errors import QSMInputError
from .lock import FolderLock, describe_holder

log = logging.getLogger("qsmlib")

#: A BIDS label: letters and digits only (BIDS specification, "Entities").
BIDS_LABEL = re.compile(r"[0-9A-Za-z]+\Z")
#: Prefix of the hidden folder where a run stages its outputs.
PARTIAL_PREFIX = ".qsm-partial-"
#: File-system errors that the user can fix (space, permissions, a read-only or wrong target).
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                       errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG, errno.EMFILE,
                       errno.ENFILE, errno.EXDEV}
#: Checks run just before any output folder moves its outputs into place (see :func:`checked_before_commit`).
_commit_checks = []


@contextlib.contextmanager
def checked_before_commit(check):
    """While inside, every :class:`OutputDirectory` calls ``check()`` before it moves its outputs into place.

    A check that raises stops the commit: the staged outputs are removed and
    the exception goes on. The command line uses this so that a stop signal
    never lets a run finish writing.
    """
    _commit_checks.append(check)
    try:
        yield
    finally:
        _commit_checks.remove(check)


def bids_label(value, option, prefix):
    """Return a BIDS label without its entity prefix, refusing anything that is not one.

    Parameters
    ----------
    value : str
        The label as given, with or without ``prefix`` (``"01"`` or ``"sub-01"``).
    option : str
        What the user gave it as, for the message (``"--subject"``).
    prefix : str
        The entity prefix, ``"sub-"`` or ``"ses-"``.

    Returns
    -------
    str
        The label, letters and digits only.

    Raises
    ------
    QSMInputError
        If the label is empty or holds anything but ASCII letters and digits
        (a path separator, ``..``, ``_``, ``-``, a space ...).
    """
    text = str(value)
    label = text[len(prefix):] if text.startswith(prefix) else text
    if not BIDS_LABEL.match(label):
        raise QSMInputError(f"{option} {text!r}: a BIDS label is letters and digits only (for example 01 or "
                            "control3); give the label without separators or path characters")
    return label


def is_within(path, folder):
    """True when ``path`` is ``folder`` or lies below it (both already resolved)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives on Windows
        return False


def resolve_output_folder(out_dir, *, option="--out"):
    """The real path of an output folder, refusing a path that cannot be a folder.

    Symbolic links are resolved, so the checks that follow see where the files
    really go. A path whose nearest existing ancestor is a file, or that is
    itself an existing file, is refused.

    Returns
    -------
    str
        The resolved absolute path (the folder need not exist yet).
    """
    real = os.path.realpath(os.path.abspath(os.fspath(out_dir)))
    if os.path.exists(real) and not os.path.isdir(real):
        raise QSMInputError(f"{option} {out_dir}: exists and is not a folder; choose another output folder")
    ancestor = os.path.dirname(real)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise QSMInputError(f"{option} {out_dir}: {ancestor} is a file, not a folder; choose an output folder "
                            "whose parents are folders")
    return real


def check_outside_raw_bids(out_real, bids_dir, *, option="--out", allow_parent=True):
    """Refuse an output folder inside the raw part of a BIDS dataset.

    Derivatives belong outside the dataset or under its ``derivatives/``
    folder; anywhere else inside the dataset (its root, a ``sub-*`` folder)
    they would mix with the raw data. With ``allow_parent`` false an output
    folder that contains the dataset is refused too.
    """
    bids_real = os.path.realpath(os.path.abspath(os.fspath(bids_dir)))
    if is_within(out_real, bids_real):
        relative = os.path.relpath(out_real, bids_real)
        first = relative.split(os.sep)[0]
        if relative == os.curdir or first != "derivatives":
            raise QSMInputError(f"{option} {out_real}: lies inside the raw BIDS dataset {bids_real}; write "
                                f"derivatives outside it or under {os.path.join(bids_real, 'derivatives')}")
    elif not allow_parent and is_within(bids_real, out_real):
        raise QSMInputError(f"{option} {out_real}: contains the BIDS dataset {bids_real}; choose a folder "
                            f"outside it (for example {os.path.join(bids_real, 'derivatives', 'qsm')})")


def _input_identities(inputs):
    """Real paths and (device, inode) pairs of the input files; the input folders apart."""
    paths, inodes, folders = set(), set(), []
    for item in inputs or ():
        if item is None:
            continue
        real = os.path.realpath(os.path.abspath(os.fspath(item)))
        if os.path.isdir(real):
            folders.append(real)
            continue
        paths.add(real)
        try:
            st = os.stat(real)
            inodes.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return paths, inodes, folders


def check_name(name):
    """Normalise a relative output name, refusing absolute paths and ``..``."""
    text = os.fspath(name)
    normal = os.path.normpath(text)
    if os.path.isabs(normal) or normal == os.curdir or normal.split(os.sep)[0] == os.pardir:
        raise QSMInputError(f"output name {text!r}: leaves the output folder; output names are relative "
                            "paths inside it")
    return normal


class OutputDirectory:
    """Stage outputs in a hidden folder and move them into place only on success.

    Use as a context manager. Inside it, write every output to
    ``stage.path(relative_name)``, for a name declared in ``names``. On a clean
    exit each file is renamed into ``out_dir`` (an atomic rename per file); on
    an exception, a Ctrl-C or a cancellation the staging folder is removed and
    ``out_dir`` is left as it was. From entering to leaving, the run holds the
    folder's lock: another run into the same folder is refused, naming this
    one; staging folders left by killed runs are removed on entering.

    Every check happens when the object is made, before anything is computed:
    ``out_dir`` is resolved (symbolic links included) and each declared name
    must stay inside it; a name that exists is refused unless ``force``; a
    name that is a folder, or that would replace one of ``inputs`` (the same
    path, a link to it, or a hard link), is refused even with ``force``; with
    ``bids_dir`` the folder must not lie in that dataset's raw folders.

    Parameters
    ----------
    out_dir : path
        Destination folder, created if missing.
    names : iterable of str
        Relative paths this run will write.
    force : bool
        Overwrite existing outputs (never inputs).
    inputs : iterable of path, optional
        Files (or folders, such as a DICOM folder) the run reads. No output may
        replace an input file, and the output folder may not lie in an input folder.
    bids_dir : path, optional
        The BIDS dataset the inputs come from (see :func:`check_outside_raw_bids`).
    option : str
        How the user named the output folder, for messages.

    Raises
    ------
    QSMInputError
        For each refusal above, naming the path, the problem and the fix.
    """

    def __init__(self, out_dir, names, *, force=False, inputs=(), bids_dir=None, option="--out"):
        self.given = os.fspath(out_dir)
        self.option = option
        self.out_dir = resolve_output_folder(out_dir, option=option)
        if bids_dir is not None:
            check_outside_raw_bids(self.out_dir, bids_dir, option=option)
        self.names = [check_name(n) for n in names]
        self.force = force
        input_paths, input_inodes, input_folders = _input_identities(inputs)
        for folder in input_folders:
            if is_within(self.out_dir, folder):
                raise QSMInputError(f"{option} {self.given}: lies inside the input folder {folder}; write the "
                                    "outputs to a folder outside the input")
        self._input_paths, self._input_inodes = input_paths, input_inodes
        for name in self.names:
            self._check_target(name)
        self._refuse_existing()
        self._created = None
        self._staging = None
        self._lock = None

    def _target(self, name):
        """The real path that ``name`` would be written to, checked to stay inside the folder."""
        joined = os.path.join(self.out_dir, name)
        real = os.path.join(os.path.realpath(os.path.dirname(joined)), os.path.basename(joined))
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not is_within(real, self.out_dir) or real == self.out_dir:
            raise QSMInputError(f"{self.option} {self.given}: {name} would be written to {real}, outside the "
                                "output folder (a symbolic link?); remove the link or choose another folder")
        return real

    def _check_target(self, name):
        real = self._target(name)
        if real in self._input_paths or (os.path.exists(real) and _inode(real) in self._input_inodes):
            raise QSMInputError(f"{self.option} {self.given}: writing {name} would overwrite the input {real}; "
                                "inputs are never overwritten, even with --force: choose another output folder")
        if os.path.isdir(real):
            raise QSMInputError(f"{self.option} {self.given}: {name} is a folder there; choose another "
                                "output folder or name")
        return real

    def existing(self):
        """Declared names that already exist in the output folder."""
        return [n for n in self.names if os.path.lexists(os.path.join(self.out_dir, n))]

    def _refuse_existing(self):
        found = self.existing()
        if found and not self.force:
            shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
            raise QSMInputError(f"{self.given}: already holds {shown}; add --force to overwrite, "
                                "or choose another output folder")

    def path(self, name):
        """Where to write ``name`` (a declared name) while the run is in progress."""
        normal = check_name(name)
        if normal not in self.names:
            raise ValueError(f"{name!r} was not declared as an output of this run")
        target = os.path.join(self._staging, normal)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return target

    def __enter__(self):
        try:
            if not os.path.isdir(self.out_dir):
                top = self.out_dir
                while not os.path.isdir(os.path.dirname(top)):
                    top = os.path.dirname(top)
                self._created = top
                os.makedirs(self.out_dir)
            self._lock = FolderLock(self.out_dir).acquire()
        except OSError as exc:
            self._remove_created()
            raise QSMInputError(f"{self.option} {self.given}: cannot write there ({exc.strerror or exc}); "
                                "choose a folder you can write to") from None
        except BaseException:
            self._remove_created()
            raise
        try:
            if self._lock.stale:
                log.warning("%s: took over the lock of a run that no longer runs (%s)", self.given,
                            describe_holder(self._lock.stale))
            remove_dead_partials(self.out_dir)
            self._refuse_existing()  # again, now that no other run can write here
            self._staging = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=self.out_dir)
        except OSError as exc:
            self._release()
            raise QSMInputError(f"{self.option} {self.given}: cannot write there ({exc.strerror or exc}); "
                                "choose a folder you can write to") from None
        except BaseException:
            self._release()
            raise
        return self

    def _release(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._remove_created()

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                for check in list(_commit_checks):
                    check()
                self._commit()
        except OSError as error:
            self._cleanup(failed=True)
            raise self._file_system_error(error) from None
        except BaseException:
            self._cleanup(failed=True)
            raise
        self._cleanup(failed=exc_type is not None)
        if exc_type is not None and issubclass(exc_type, OSError) and self._is_write_error(exc):
            raise self._file_system_error(exc) from None
        return False

    def _is_write_error(self, error):
        """A fixable file-system error while writing into this folder (not while reading an input)."""
        if error.errno not in USER_FIXABLE_ERRNOS:
            return False
        filename = error.filename
        if not isinstance(filename, (str, os.PathLike)):
            return True
        return is_within(os.path.realpath(os.path.abspath(os.fspath(filename))), self.out_dir)

    def _file_system_error(self, error):
        return QSMInputError(f"{self.option} {self.given}: {error.strerror or error} while writing the outputs; "
                             "nothing was written: free space, fix the permissions or choose another folder")

    def _cleanup(self, *, failed):
        shutil.rmtree(self._staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if failed:
            self._remove_created()

    def _remove_created(self):
        if self._created and os.path.isdir(self._created) and not _has_files(self._created):
            shutil.rmtree(self._created, ignore_errors=True)

    def _commit(self):
        moves = []
        for root, _dirs, files in os.walk(self._staging):
            for f in files:
                src = os.path.join(root, f)
                name = os.path.relpath(src, self._staging)
                moves.append((src, name, self._check_target(name)))
        for src, _name, dst in moves:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)


def remove_dead_partials(folder):
    """Remove the staging folders (``.qsm-partial-*``) that killed runs left in ``folder``.

    Call only while holding the folder's :class:`~qsmlib.io.lock.FolderLock`:
    then no live run is staging there, so every such folder is a dead run's.

    Returns
    -------
    list of str
        The names removed.
    """
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(PARTIAL_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("%s: removed %d staging folder(s) left by killed runs", folder, len(removed))
    return removed


def _inode(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _has_files(folder):
    return any(files for _root, _dirs, files in os.walk(folder))
