"""The one server-side folder that the browser app may read: names in, checked paths out.

The browser sends file names as text. Every name goes through
:meth:`DataFolder.resolve` (a file) or :meth:`DataFolder.resolve_folder` (a
BIDS dataset or DICOM folder, with everything in it), which joins it to the folder given with
``qsm web --data``, resolves every symbolic link, and refuses anything whose
real path lies outside that folder (``../``, an absolute path, a link that
points elsewhere). Nothing else in the web app opens a file named by the
browser.
"""

import os
from pathlib import Path

from ..errors import QSMInputError
from ..io.output import is_within

#: File name endings the app offers as images.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Most files listed (a data folder with more is still usable: names can be typed).
MAX_LISTED = 2000


class DataFolderError(QSMInputError):
    """A name that does not lead to a readable file inside the data folder."""


class DataFolder:
    """The folder the browser can reach (``qsm web --data``).

    Parameters
    ----------
    root : path
        An existing folder. Its real path (symbolic links resolved) is the
        boundary that :meth:`resolve` enforces.

    Raises
    ------
    DataFolderError
        When ``root`` does not exist or is not a folder.
    """

    def __init__(self, root):
        given = os.fspath(root)
        real = os.path.realpath(os.path.abspath(given))
        if not os.path.exists(real):
            raise DataFolderError(f"--data {given}: no such folder; give an existing folder that holds the "
                                  "NIfTI files to open in the browser")
        if not os.path.isdir(real):
            raise DataFolderError(f"--data {given}: is a file, not a folder; give the folder that holds the "
                                  "NIfTI files to open in the browser")
        self.root = Path(real)

    def resolve(self, name):
        """The real path of an existing file ``name`` (relative to the data folder).

        Raises
        ------
        DataFolderError
            For an empty or absolute name, a name whose real path leaves the
            folder (``..``, a symbolic link pointing outside), and a name that
            is not an existing regular file. The message names the path, the
            problem and the fix.
        """
        text = "" if name is None else str(name).strip()
        if not text:
            raise DataFolderError("no file name given; choose a file of the data folder")
        real = self._inside(text, "", "file")
        if not os.path.isfile(real):
            raise DataFolderError(f"{text}: is a folder, not a file; choose a NIfTI file of the data folder")
        return Path(real)

    def resolve_folder(self, name, *, what="folder", check_tree=True):
        """The real path of an existing folder ``name`` whose whole tree stays inside the data folder.

        ``"."`` (or an empty name) is the data folder itself. Every file and
        sub-folder below it is checked too, symbolic links followed, because
        there: a link anywhere in the tree that leads out of the data folder
        refuses the whole folder. ``check_tree=False`` checks the folder
        itself only (for listing its sub-folders).

        Raises
        ------
        DataFolderError
            For an absolute name, a folder (or a link inside it) whose real path
            leaves the data folder, and a name that is not an existing folder.
            The message names ``what``, the path, the problem and the fix.
        """
        text = "." if name is None or not str(name).strip() else str(name).strip()
        real = self._inside(text, f"{what} ", "folder")
        if not os.path.isdir(real):
            raise DataFolderError(f"{what} {text}: is a file, not a folder; choose a folder of the data folder")
        if not check_tree:
            return Path(real)
        seen = set()
        for directory, folders, files in os.walk(real, followlinks=True):
            here = os.path.realpath(directory)
            if here in seen:  # a link back up the tree: walked already
                folders[:] = []
                continue
            seen.add(here)
            for entry in folders + files:
                path = os.path.join(directory, entry)
                target = os.path.realpath(path)
                if not is_within(target, str(self.root)):
                    raise DataFolderError(f"{what} {text}: {self.relative_name(path)} leads to {target}, outside "
                                          f"the data folder {self.root}; only files inside it can be opened: "
                                          "replace the link by the files it points to, or remove it")
        return Path(real)

    def _inside(self, text, prefix, kind):
        """The real path of ``text``, an existing ``kind`` ("file" or "folder") inside the data folder.

        Refuses a NUL character, an absolute path, a real path outside the
        folder and a missing path; ``prefix`` starts the message (what the
        name is for).
        """
        if "\x00" in text:
            raise DataFolderError(f"{prefix}{text!r}: a {kind} name cannot hold a NUL character; choose a {kind} "
                                  "of the data folder")
        if os.path.isabs(text):
            raise DataFolderError(f"{prefix}{text}: is an absolute path; give a name relative to the data folder "
                                  f"{self.root} (only {kind}s inside it can be opened)")
        real = os.path.realpath(os.path.join(self.root, text))
        if not is_within(real, str(self.root)):
            raise DataFolderError(f"{prefix}{text}: leads to {real}, outside the data folder {self.root}; only "
                                  f"{kind}s inside it can be opened: copy the {kind} into the data folder or "
                                  "restart qsm web with --data naming a folder that holds it")
        if not os.path.exists(real):
            raise DataFolderError(f"{prefix}{text}: no such {kind} in the data folder {self.root}; choose one of "
                                  f"the {kind}s listed")
        return real

    def folders(self):
        """Names of the folders inside the data folder ("." for the folder itself), sorted.

        Hidden folders and links to folders are left out; at most
        :data:`MAX_LISTED` names.
        """
        names = ["."]
        for directory, folders, _files in os.walk(self.root):
            folders[:] = sorted(f for f in folders
                                if not f.startswith(".") and not os.path.islink(os.path.join(directory, f)))
            for folder in folders:
                names.append(self.relative_name(os.path.join(directory, folder)))
                if len(names) >= MAX_LISTED:
                    return names
        return names

    def relative_name(self, path):
        """The name of ``path`` (inside the folder) relative to the folder, with forward slashes."""
        return Path(os.path.relpath(path, self.root)).as_posix()

    def nifti_files(self):
        """Names of the NIfTI files inside the folder (sorted, links leaving the folder skipped).

        At most :data:`MAX_LISTED` names; sub-folders are searched too (links to
        folders are not followed).
        """
        names = []
        for directory, folders, files in os.walk(self.root):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for file_name in sorted(files):
                if file_name.startswith(".") or not file_name.endswith(NIFTI_SUFFIXES):
                    continue
                path = os.path.join(directory, file_name)
                if is_within(os.path.realpath(path), str(self.root)) and os.path.isfile(path):
                    names.append(self.relative_name(path))
                    if len(names) >= MAX_LISTED:
                        return names
        return names
