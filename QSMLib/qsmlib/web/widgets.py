"""Widgets the panels of the web app share."""

from trame.widgets import vuetify3 as v3


def download_button(file_name, element_id, trigger_name, mime, key=None):
    """A small button that saves ``file_name``, whose bytes the server callback ``trigger_name`` returns.

    ``key``, when given, is passed to the callback (which map to send).
    """
    arguments = f", ['{key}']" if key is not None else ""
    return v3.VBtn(file_name, id=element_id, size="small", classes="ma-1", prepend_icon="mdi-download",
                   click=f"utils.download('{file_name}', trigger('{trigger_name}'{arguments}), '{mime}')")
