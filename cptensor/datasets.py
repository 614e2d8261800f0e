"""Real tensors that TensorLy ships with its package (no download): located, not copied.

``load("kinetic")`` returns the fluorescence kinetics tensor (64×12×10×60),
``load("il2")`` the IL-2 response tensor (13×4×12×8, with NaNs for missing values),
``load("covid19")`` the COVID-19 serology tensor, ``load("indian_pines")`` the Indian
Pines hyperspectral image (145×145×200). They need the ``tensorly`` package installed
(it is in the ``dev`` extra); a clear error says so otherwise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import CPTensorError

__all__ = ["DATASETS", "data_path", "load"]

#: Names accepted by :func:`load`, with the file each reads and what it holds.
DATASETS: dict[str, tuple[str, str]] = {
    "kinetic": ("Kinetic.npy", "fluorescence kinetics, 64×12×10×60 (Nikolajsen et al.)"),
    "il2": ("IL2_Response_Tensor.npy", "IL-2 mutein response, 13×4×12×8, 192 NaN (missing)"),
    "covid19": ("COVID19_data.npy", "COVID-19 systems serology, 438×6×11"),
    "indian_pines": ("Indian_pines_corrected.npy", "Indian Pines hyperspectral, 145×145×200"),
}


def data_path(name: str) -> Path:
    """Path of a dataset file inside the installed ``tensorly`` package.

    >>> data_path("kinetic").name
    'Kinetic.npy'
    """
    key = name.lower()
    if key not in DATASETS:
        raise CPTensorError(
            f"name={name!r} is not a known dataset; expected one of {sorted(DATASETS)}"
        )
    spec = importlib.util.find_spec("tensorly")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"dataset {name!r} ships with the 'tensorly' package, which is not installed; "
            "install it (pip install tensorly, or the project's dev extra)"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / DATASETS[key][0]
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} is missing from the tensorly package")
    return path


def load(name: str) -> np.ndarray:
    """Load a TensorLy-shipped dataset as a float64 NumPy array.

    >>> load("kinetic").shape
    (64, 12, 10, 60)
    """
    arr = np.load(data_path(name), allow_pickle=False)
    return np.asarray(arr, dtype=np.float64)
