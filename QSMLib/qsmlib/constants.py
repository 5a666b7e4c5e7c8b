"""Physical constants and unit conversions.

Units used across QSMLib: echo times in seconds, B0 in tesla, voxel sizes in
millimetres, frequencies in Hz, susceptibility and relative field in ppm.
"""

#: Gyromagnetic ratio of the proton over 2 pi, in Hz per tesla.
GAMMA_HZ_PER_T = 42.577478e6


def hz_per_ppm(b0_t):
    """Frequency offset in Hz that corresponds to a 1 ppm field change at ``b0_t``."""
    return GAMMA_HZ_PER_T * float(b0_t) * 1e-6


def hz_to_ppm(field_hz, b0_t):
    """Convert a field map from Hz to ppm of B0."""
    return field_hz / hz_per_ppm(b0_t)


def ppm_to_hz(field_ppm, b0_t):
    """Convert a field map from ppm of B0 to Hz."""
    return field_ppm * hz_per_ppm(b0_t)
