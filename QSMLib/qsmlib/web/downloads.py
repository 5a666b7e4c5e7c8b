"""Downloads of the web app: the button the panels share, and volumes as NIfTI bytes."""

import os
import tempfile

from trame.widgets import vuetify3 as v3


def download_button(file_name, element_id, trigger_name, mime, key=None):
    """A small button that saves ``file_name``, whose bytes the server callback ``trigger_name`` returns.

    ``key``, when given, is passed to the callback (which map to send).
    """
    arguments = f", ['{key}']" if key is not None else ""
    return v3.VBtn(file_name, id=element_id, size="small", classes="ma-1", prepend_icon="mdi-download",
                   click=f"utils.download('{file_name}', trigger('{trigger_name}'{arguments}), '{mime}')")


def nifti_bytes(file_name, array, affine, dtype):
    """The bytes of ``array`` saved as the NIfTI file ``file_name`` (.nii.gz) by :func:`qsmlib.io.save_nifti`."""
    from qsmlib.io import save_nifti

    with tempfile.TemporaryDirectory(prefix="qsm-web-") as folder:
        path = os.path.join(folder, file_name)
        save_nifti(path, array, affine, dtype=dtype)
        with open(path, "rb") as f:
            return f.read()
