"""Python packages that qsmlib needs beyond what Slicer ships.

Slicer already ships numpy, scipy and SimpleITK; those are never installed.
Anything else is installed only after the user agrees, on the first Apply,
never when a module opens.
"""

import importlib.util

#: import name -> pip requirement, for packages Slicer does not ship.
EXTRA_PACKAGES = {"nibabel": "nibabel>=3.2", "skimage": "scikit-image>=0.19"}


def missing_packages():
    """Pip requirements of the extra packages that cannot be imported here."""
    return [requirement for name, requirement in EXTRA_PACKAGES.items()
            if importlib.util.find_spec(name) is None]


def ensure_packages(confirm, install):
    """Install missing packages if ``confirm(requirements)`` says yes.

    ``install(requirement)`` is for example ``slicer.util.pip_install``.
    Returns True when everything is importable afterwards.
    """
    missing = missing_packages()
    if not missing:
        return True
    if not confirm(missing):
        return False
    for requirement in missing:
        install(requirement)
    importlib.invalidate_caches()
    return not missing_packages()


def ensure_packages_in_slicer(question):
    """:func:`ensure_packages` with Slicer's OK/Cancel dialog and ``slicer.util.pip_install``.

    ``question`` is the (translated) text of the dialog with a ``{packages}``
    field, e.g. "QSM needs these Python packages: {packages}. Install them now?".
    The dialog only opens when a package is missing.
    """
    import slicer.util

    return ensure_packages(
        lambda missing: slicer.util.confirmOkCancelDisplay(question.format(packages=", ".join(missing))),
        lambda requirement: slicer.util.pip_install(requirement))
