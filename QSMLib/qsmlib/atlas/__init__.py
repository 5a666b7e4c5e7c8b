"""Deep grey matter regions without painting: a labelled template registered to each subject.

- :mod:`qsmlib.atlas.template`: template folders (images, label image, label
  table), their check, and QSMLib's head model written as one.
- :mod:`qsmlib.atlas.registration`: rigid, affine and deformable registration
  with SimpleITK, label warping and the plausibility checks.
- :mod:`qsmlib.atlas.segment`: the file-level step behind ``qsm segment``,
  ``qsm run --atlas`` and ``qsm batch --atlas``.

SimpleITK is imported only when a registration runs.
"""

from .registration import (RegistrationFailed, RegistrationOptions, RegistrationResult, check_registration,
                           register_template, warp_labels)
from .template import (DEEP_GREY_MATTER_SEGMENTS, AtlasTemplate, LabelInfo, check_template, load_template,
                       read_label_table, write_head_model_template, write_label_table)

__all__ = ["AtlasTemplate", "DEEP_GREY_MATTER_SEGMENTS", "LabelInfo", "RegistrationFailed", "RegistrationOptions",
           "RegistrationResult", "check_registration", "check_template", "load_template", "read_label_table",
           "register_template", "warp_labels", "write_head_model_template", "write_label_table"]
