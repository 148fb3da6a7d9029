"""QM9's vocabulary: its elements, its 12 properties, their units and conversions.

QM9 (Ramakrishnan et al., Sci. Data 1, 140022, 2014) holds 133,885 small organic molecules (up to
nine heavy atoms C, N, O, F) with B3LYP/6-31G(2df,p) geometries and properties; 3,054 of them
failed the authors' consistency check ("uncharacterized"), leaving 130,831.

Energies (homo, lumo, gap, zpve, U0, U, H, G) come in Hartree and are stored in eV
(1 Ha = 27.211386246 eV, CODATA 2018); mu in Debye, alpha in bohr^3, r2 in bohr^2 and Cv in
cal/(mol K) are stored as they are.
"""

from __future__ import annotations

import numpy as np

from se3t.choices import QM9_TARGETS

__all__ = [
    "ELEMENTS",
    "HARTREE_TARGETS",
    "HARTREE_TO_EV",
    "QM9_TARGETS",
    "SYMBOL_OF",
    "TARGET_SCALE",
    "TARGET_UNITS",
]


# element symbol -> atomic number; QM9 holds these five only
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOL_OF: dict[int, str] = {z: s for s, z in ELEMENTS.items()}

HARTREE_TO_EV = 27.211386246
HARTREE_TARGETS = ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G")
TARGET_UNITS: dict[str, str] = {
    "mu": "D",
    "alpha": "bohr^3",
    "homo": "eV",
    "lumo": "eV",
    "gap": "eV",
    "r2": "bohr^2",
    "zpve": "eV",
    "U0": "eV",
    "U": "eV",
    "H": "eV",
    "G": "eV",
    "Cv": "cal/(mol K)",
}
# the factor that turns the source's unit into the stored one, per target in QM9_TARGETS order
TARGET_SCALE = np.array(
    [HARTREE_TO_EV if t in HARTREE_TARGETS else 1.0 for t in QM9_TARGETS], dtype=np.float64
)
