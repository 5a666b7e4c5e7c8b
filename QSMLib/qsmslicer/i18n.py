"""Translation functions: Slicer's own in Slicer, the identity where there is no ``slicer.i18n``.

Slicer's ``tr`` takes its translation context from the calling file, so it is
re-exported as it is (a wrapper would give every string this file's context).
On a plain MRML scene (slicer-core, the web app) the texts stay in English.
"""

__all__ = ["tr", "translate"]

try:
    from slicer.i18n import tr, translate
except ImportError:  # slicer-core has MRML but not Slicer's Python layer
    def tr(text):
        """The text itself (no Slicer application to translate it)."""
        return text

    def translate(context, text):
        """The text itself (no Slicer application to translate it)."""
        return text
