"""Python packages that qsmlib needs beyond what Slicer ships, installed on first use after asking.

Slicer already ships numpy, scipy, SimpleITK and pydicom; those are never
installed or upgraded: the installation is constrained to the versions this
Slicer has. Anything else is installed only after the user agrees, when a Logic
first needs it (never when a module opens), with a wait cursor or Slicer's
progress dialog; a failure raises :class:`DependencyError`, which the Widgets
show in an error dialog:

- Slicer 5.12 and newer: ``slicer.packaging.pip_ensure`` (its own confirmation
  and progress dialogs; it skips installing in testing mode);
- older releases: ``slicer.util.confirmOkCancelDisplay``, then
  ``slicer.util.pip_install``.
"""

import importlib
import importlib.metadata
import importlib.util
import os
import tempfile

from qsmlib.errors import QSMInputError

#: import name -> pip requirement, for packages Slicer does not ship.
EXTRA_PACKAGES = {"nibabel": "nibabel>=3.2", "skimage": "scikit-image>=0.19", "threadpoolctl": "threadpoolctl>=3.1"}
#: Distributions Slicer ships: pinned to their installed version while installing the extras.
SLICER_PACKAGES = ("numpy", "scipy", "SimpleITK", "pydicom")


class DependencyError(QSMInputError):
    """A package qsmlib needs is missing and was not installed."""


def missing_packages():
    """Pip requirements of the extra packages that cannot be imported here."""
    return [requirement for name, requirement in EXTRA_PACKAGES.items()
            if importlib.util.find_spec(name) is None]


def constraints_text():
    """pip constraints that hold every package Slicer ships at its installed version."""
    lines = []
    for distribution in SLICER_PACKAGES:
        try:
            lines.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def ensure_packages(confirm, install, requester="QSM"):
    """Install the missing extra packages if ``confirm(requirements)`` says yes.

    ``install(requirements, constraints_path)`` does the installation. Raises
    :class:`DependencyError` when the user declines or a package is still missing
    afterwards; returns the requirements that were installed ([] if none).
    """
    missing = missing_packages()
    if not missing:
        return []
    if not confirm(missing):
        raise DependencyError(f"{requester} needs the Python packages {', '.join(missing)}; "
                              "they were not installed (declined). Install them to continue.")
    handle, constraints_path = tempfile.mkstemp(prefix="qsm-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as constraints:
            constraints.write(constraints_text())
        install(missing, constraints_path)
    finally:
        os.remove(constraints_path)
    importlib.invalidate_caches()
    still_missing = missing_packages()
    if still_missing:
        raise DependencyError(f"{requester}: {', '.join(still_missing)} could not be installed; "
                              "see the Python console for pip's message")
    return missing


def ensure_packages_in_slicer(requester="QSM"):
    """:func:`ensure_packages` with Slicer's own dialogs and installer (see the module docstring).

    Raises :class:`DependencyError` when a package is still missing; the caller
    shows it (the Widgets call this inside ``slicer.util.tryWithErrorDisplay``).
    """
    missing = missing_packages()
    if not missing:
        return []
    try:
        import qt
    except ImportError:  # MRML without Slicer's application (slicer-core): no dialog to ask with
        raise DependencyError(f"{requester} needs the Python packages {', '.join(missing)}; "
                              "install them with pip") from None
    import slicer.util

    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None

    if packaging is not None and hasattr(packaging, "pip_ensure"):
        def confirm(missing):
            return True  # pip_ensure asks the user itself

        def install(missing, constraints_path):
            try:
                packaging.pip_ensure(missing, constraints=constraints_path, requester=requester)
            except RuntimeError as declined:
                raise DependencyError(f"{requester} needs {', '.join(missing)}: {declined}") from None
    else:
        def confirm(missing):
            return slicer.util.confirmOkCancelDisplay(
                f"{requester} needs these Python packages: {', '.join(missing)}. Install them now? "
                "(numpy, scipy, SimpleITK and pydicom stay at the versions Slicer ships.)")

        def install(missing, constraints_path):
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                slicer.util.pip_install(missing + ["-c", constraints_path])
            finally:
                qt.QApplication.restoreOverrideCursor()

    return ensure_packages(confirm, install, requester)
