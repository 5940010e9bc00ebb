"""lotsim: Lattice Oscillator Transformers and the physics tooling to simulate them.

The package is layered: ``cli`` -> (``train``, ``analysis``, ``export``) -> (``model``, ``dynamics``)
-> (``lattice``, ``io``). Importing :mod:`lotsim` is cheap; torch is imported by the modules that need it.

The Python API (:mod:`lotsim.api`, documented in docs/python.md) is re-exported here:
``lotsim.simulate``, ``lotsim.load_run`` and ``lotsim.load_model``.
"""

__version__ = "0.1.0"

_API = ("simulate", "load_run", "load_model", "Run", "TrainedModel")


def __getattr__(name: str):
    if name in _API:  # imported on first use, so `import lotsim` stays instant
        from lotsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'lotsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
