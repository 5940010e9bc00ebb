"""Analysis of lotsim trajectories (H5MD): order parameters, locking, phase transitions, topological
defects and plots. Library code: no typer/rich; matplotlib is imported inside the figure functions
(:mod:`lotsim.analysis.plots` and its helpers), torch only inside :func:`adiabatic_sweep`.

One library entry per ``lotsim analyze`` verb: :func:`analyze_order`, :func:`analyze_transition`,
:func:`analyze_defects`, and :func:`lotsim.analysis.plots.plot_snapshot` / ``plot_spacetime`` /
``write_movie``. Every analysis streams the phases with ``Trajectory.iter_frames`` (memory flat in
frames) and reads a partial (killed) file up to its last complete frame, with a warning.
"""

from lotsim.analysis.defects import DefectReport, analyze_defects
from lotsim.analysis.order import OrderReport, analyze_order
from lotsim.analysis.theory import Theory, critical_coupling, ott_antonsen_r, stationary_r, theory_for_run
from lotsim.analysis.transition import TransitionReport, adiabatic_sweep, analyze_transition, fit_kc

__all__ = [
    "DefectReport",
    "OrderReport",
    "Theory",
    "TransitionReport",
    "adiabatic_sweep",
    "analyze_defects",
    "analyze_order",
    "analyze_transition",
    "critical_coupling",
    "fit_kc",
    "ott_antonsen_r",
    "stationary_r",
    "theory_for_run",
]
