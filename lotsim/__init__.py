"""lotsim: Lattice Oscillator Transformers and the physics tooling to simulate them.

The package is layered: ``cli`` -> (``train``, ``analysis``, ``export``) -> (``model``, ``dynamics``)
-> (``lattice``, ``io``). Importing :mod:`lotsim` is cheap; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"
