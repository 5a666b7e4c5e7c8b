"""The modules compute with the thread count of Slicer's own processing.

Slicer has no thread setting of its own. Its image processing (ITK-based CLI
modules and Segment Editor effects, SimpleITK in the Python console) runs on
ITK's global default number of threads: all CPUs, unless the environment
variable ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` limits it when Slicer starts,
or ``SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(n)`` changes it
in the Python console. The Logics run qsmlib inside ``qsmlib.threads`` of that
count (:func:`computation_threads`), so its FFTs and BLAS/OpenMP pools follow
the same setting, and the count goes into each map's provenance.
"""

#: How the count is named in provenance.
SOURCE = "Slicer: ITK's global default number of threads"


def slicer_thread_count():
    """ITK's global default number of threads, through SimpleITK (which every Slicer ships)."""
    import SimpleITK

    return int(SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads())


def computation_threads(threads=None):
    """``qsmlib.threads`` of ``threads``, or of :func:`slicer_thread_count` when None.

    Raises :class:`qsmlib.errors.QSMInputError` for a count that is not a whole
    number of 1 or more.
    """
    from qsmlib.parallel import threads as qsmlib_threads

    return qsmlib_threads(slicer_thread_count() if threads is None else threads)


def record(provenance, threads=None):
    """Name where the thread count of ``provenance["threads"]`` came from (Slicer's, or the caller's)."""
    if "threads" in provenance:
        source = SOURCE if threads is None else "given to the Logic"
        provenance["threads"] = dict(provenance["threads"], source=source)
    return provenance
