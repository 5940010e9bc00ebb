"""Analysis of lotsim trajectories (H5MD): order parameters, locking, phase transitions, topological
defects and plots. Library code: no typer/rich; matplotlib is imported inside the plotting functions.

Entry points (one per ``lotsim analyze`` verb): :func:`analyze_order`, :func:`analyze_transition`,
:func:`analyze_defects`, and in :mod:`lotsim.analysis.plots` the snapshot/movie writers.
"""

from lotsim.analysis.order import OrderReport, analyze_order

__all__ = ["OrderReport", "analyze_order"]
