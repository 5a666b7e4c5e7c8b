"""``qsm web``: QSM in the browser on Slicer's own MRML engine (trame-slicer).

The app's packages (trame, trame-slicer, slicer-core) come with the optional
extra ``qsmlib[web]``; they are imported only when the app starts, so the rest
of qsmlib runs without them. :func:`serve` is what ``qsm web`` calls.
"""

import importlib.util

from ..errors import QSMInputError

#: Import name -> the distribution that provides it, for the message when one is missing.
WEB_PACKAGES = {"trame": "trame", "trame_slicer": "trame-slicer", "slicer": "slicer-core"}
INSTALL_HINT = 'pip install "qsmlib[web]"'
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def missing_web_packages():
    """Distributions the web app needs that are not installed (empty when all are)."""
    return [dist for module, dist in WEB_PACKAGES.items() if importlib.util.find_spec(module) is None]


def require_web_packages():
    """Raise :class:`QSMInputError` naming the install command when a web package is missing."""
    missing = missing_web_packages()
    if missing:
        raise QSMInputError(f"qsm web needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                            f"not installed; install the web extra: {INSTALL_HINT}")


def is_loopback(host):
    """True for a host name or address that only this machine can reach."""
    return host in LOOPBACK_HOSTS or str(host).startswith("127.")


def serve(*, data_dir, port=8080, host="127.0.0.1", threads=None, open_browser=False):
    """Start the web app on ``host:port`` serving files of ``data_dir`` only; returns when it stops.

    ``threads``: the computing threads of each run (default: ``$QSMLIB_FFT_WORKERS``,
    else all CPUs, as for ``qsm run``), recorded in the provenance.
    """
    from ..parallel import get_threads
    from .data_folder import DataFolder

    folder = DataFolder(data_dir)
    require_web_packages()
    from .app import QSMWebApp

    app = QSMWebApp(folder, threads=threads or get_threads())
    app.server.start(port=port, host=host, open_browser=open_browser, show_connection_info=True)
