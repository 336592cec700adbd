"""Materials of the synthetic x-ray images and their attenuation at the scanner's energies.

Mass attenuation coefficients come from ``xraydb`` (PyPI; the NIST/Elam tables shipped as a
local database, no download) for each material's elemental composition by mass; densities are
the figures in docs/xray.md with their sources. A dual-energy scanner is modelled by two
effective energy bands (:data:`LOW_BAND_KEV`, :data:`HIGH_BAND_KEV`, equal weights): the
transmission of a band is the mean of ``exp(-mu(E) * t)`` over its energies, so thick objects
harden the beam as in a real polychromatic tube. Everything here is an assumption stated in
docs/xray.md, not a measured scanner response.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

LOW_BAND_KEV: tuple[float, ...] = (30.0, 40.0, 50.0, 60.0, 70.0)
"""Effective energies of the low-energy detector layer (assumed; see docs/xray.md)."""
HIGH_BAND_KEV: tuple[float, ...] = (70.0, 90.0, 110.0, 130.0, 150.0)
"""Effective energies of the high-energy detector layer (assumed; see docs/xray.md)."""


@dataclass(frozen=True)
class Material:
    """A material: elemental mass fractions, a density range (g/cm3) and the source of both."""

    name: str
    mass_fractions: Mapping[str, float]
    density: float
    density_range: tuple[float, float]
    source: str

    def formula(self) -> str:
        """The composition as an xraydb formula (atom ratios from the mass fractions)."""
        return _formula(tuple(self.mass_fractions.items()))

    def mass_attenuation(self, energy_kev: float) -> float:
        """mu/rho in cm2/g at ``energy_kev`` (total attenuation, coherent scattering included)."""
        return _mass_attenuation(self.name, self.formula(), energy_kev)

    def band_coefficients(self, band: tuple[float, ...]) -> npt.NDArray[np.float64]:
        """Linear attenuation coefficients mu (1/cm) at the band's energies, at ``density``."""
        return np.array([self.mass_attenuation(e) * self.density for e in band])


@functools.lru_cache(maxsize=64)
def _formula(mass_fractions: tuple[tuple[str, float], ...]) -> str:
    import xraydb

    total = sum(fraction for _, fraction in mass_fractions)
    parts = []
    for element, fraction in mass_fractions:
        atoms = fraction / total / float(xraydb.atomic_mass(element))
        parts.append(f"{element}{atoms * 1000:.5f}")
    return "".join(parts)


@functools.lru_cache(maxsize=256)
def _mass_attenuation(name: str, formula: str, energy_kev: float) -> float:
    import xraydb

    return float(xraydb.material_mu(formula, energy_kev * 1000.0, density=1.0, kind="total"))


_ATOMIC_MASS = {"O": 15.999, "Al": 26.982, "Si": 28.086, "K": 39.098}
_OXIDES = {"SiO2": {"Si": 1, "O": 2}, "Al2O3": {"Al": 2, "O": 3}, "K2O": {"K": 2, "O": 1}}


def oxides_to_elements(oxides: Mapping[str, float]) -> dict[str, float]:
    """Elemental mass fractions of a mix of oxides (SiO2, Al2O3, K2O) given by mass fraction."""
    result: dict[str, float] = {}
    for oxide, fraction in oxides.items():
        atoms = _OXIDES[oxide]
        mass = sum(n * _ATOMIC_MASS[e] for e, n in atoms.items())
        for element, n in atoms.items():
            share = n * _ATOMIC_MASS[element] / mass
            result[element] = result.get(element, 0.0) + fraction * share
    return result


MATERIALS: dict[str, Material] = {
    "ivory_bone": Material(
        name="ivory_bone",
        # ICRU-44 cortical bone (ICRU Report 44; as tabulated by NIST): ivory (dentine) is
        # modelled like cortical bone, as ../shared/reference/xray-and-dicos.md advises.
        mass_fractions={
            "H": 0.034,
            "C": 0.155,
            "N": 0.042,
            "O": 0.435,
            "Na": 0.001,
            "Mg": 0.002,
            "P": 0.103,
            "S": 0.003,
            "Ca": 0.225,
        },
        density=1.92,
        density_range=(1.75, 1.95),
        source="ICRU-44 cortical bone, rho 1.92 (NIST); dentine 1.8-1.9 assumed",
    ),
    "wood": Material(
        name="wood",
        mass_fractions={"C": 6 * 12.011, "H": 10 * 1.008, "O": 5 * 15.999},  # cellulose
        density=0.85,
        density_range=(0.85, 1.2),
        source="cellulose C6H10O5; Dalbergia latifolia air-dry ~0.85, kingwood ~1.2 (USDA FPL)",
    ),
    "porcelain": Material(
        name="porcelain",
        mass_fractions=oxides_to_elements({"SiO2": 0.70, "Al2O3": 0.25, "K2O": 0.05}),
        density=2.4,
        density_range=(2.3, 2.5),
        source="assumed hard-paste body 70% SiO2, 25% Al2O3, 5% K2O by mass; rho 2.3-2.5",
    ),
    "keratin": Material(
        name="keratin",
        mass_fractions={"C": 0.50, "H": 0.07, "N": 0.165, "O": 0.225, "S": 0.04},
        density=1.3,
        density_range=(1.25, 1.35),
        source="assumed protein C/H/N/O/S composition of hard keratin; rho ~1.3",
    ),
    "leather": Material(
        name="leather",
        mass_fractions={"C": 0.50, "H": 0.066, "N": 0.18, "O": 0.25, "S": 0.004},
        density=0.9,
        density_range=(0.8, 1.0),
        source="assumed collagen composition; bulk leather rho ~0.8-1.0 (porous)",
    ),
}
"""Every material the synthesiser knows; keratin and leather are for classes agencies will add."""

REFERENCE_MATERIALS: dict[str, Material] = {
    "water": Material("water", {"H": 0.111894, "O": 0.888106}, 1.0, (1.0, 1.0), "H2O"),
    "aluminium": Material("aluminium", {"Al": 1.0}, 2.699, (2.699, 2.699), "Al"),
}
"""Anchors of the pseudo-colour scale: water is fully organic, aluminium fully inorganic."""


def band_transmission(
    material: Material,
    thickness_cm: npt.NDArray[np.float64],
    band: tuple[float, ...],
    density_factor: float = 1.0,
) -> npt.NDArray[np.float64]:
    """Beer-Lambert transmission I/I0 of the band through ``thickness_cm`` of ``material``:
    the mean over the band's energies of ``exp(-mu(E) * density_factor * t)``."""
    mus = material.band_coefficients(band) * density_factor
    t = np.asarray(thickness_cm, dtype=np.float64)
    result: npt.NDArray[np.float64] = np.mean([np.exp(-mu * t) for mu in mus], axis=0)
    return result


def dual_energy_ratio(material: Material) -> float:
    """Mean mu over the low band divided by mean mu over the high band: rises with Z_eff."""
    low = material.band_coefficients(LOW_BAND_KEV).mean()
    high = material.band_coefficients(HIGH_BAND_KEV).mean()
    return float(low / high)


def organic_scale(material: Material) -> float:
    """0 for water-like (organic, orange), 1 for aluminium-like (inorganic, blue), clipped."""
    water = dual_energy_ratio(REFERENCE_MATERIALS["water"])
    aluminium = dual_energy_ratio(REFERENCE_MATERIALS["aluminium"])
    return float(np.clip((dual_energy_ratio(material) - water) / (aluminium - water), 0.0, 1.0))
