"""What every analysis figure shares: the canvas (matplotlib, imported lazily; Agg, no pyplot global
state), where figures go and how they are saved (with provenance), the phase colours and labels, and
:class:`_Field`, the drawer of one replica's phase field.

Phase fields:

- square grids: an image with x = lattice axis 0 (horizontal) and y = axis 1, so a +1 vortex
  turns counter-clockwise on screen (3-D+ grids: the slice at index 0 of the other axes);
- other lattices with 2-D positions (triangular, hexagonal, ...): a scatter at the node positions
  with the lattice bonds drawn (bonds that wrap around a periodic boundary are left out);
- rings and chains: phase against node index;
- graphs without geometry (complete, random): the oscillators on the unit circle, coloured by
  natural frequency, with the order parameter r e^{i psi} as an arrow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lotsim.analysis._run import RunInfo
from lotsim.observables import order_parameter

PHASE_CMAP = "twilight"
TIME_LABEL = "time t (units of 1/ω)"
PHASE_TICKS = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi, 2 * math.pi]
PHASE_TICKLABELS = ["0", "π/2", "π", "3π/2", "2π"]
FORMATS = ("png", "svg")


def time_label(info: RunInfo) -> str:
    """"time t (units of 1/ω)" when the natural frequencies set a time scale, else "time t".

    They set one when their distribution has a width or a nonzero centre (or comes from a file);
    identical oscillators at ω = 0 have none (their time scale is set by the coupling).
    """
    freq = info.section("frequencies")
    if not freq:
        return "time t"
    dist = freq.get("dist", "constant")
    if dist == "file" or float(freq.get("mean", 0.0) or 0.0) != 0.0 or (
            dist != "constant" and float(freq.get("width", 0.0) or 0.0) > 0.0):
        return TIME_LABEL
    return "time t"



def _stem(path: str | Path, group: str | None) -> str:
    """File-name stem of a run's figures: the file's stem, plus the group when one was asked for."""
    return Path(path).stem + (f"_{group}" if group else "")



def default_plot_dir(path: str | Path) -> Path:
    """``plots/`` next to the trajectory file."""
    return Path(path).resolve().parent / "plots"



def _out(path, out, stem: str) -> tuple[Path, str]:
    if out is None:
        return default_plot_dir(path), stem
    out = Path(out)
    return (out.parent, out.stem) if out.suffix else (out, stem)



def _figure(width: float = 6.4, height: float = 4.4, nrows: int = 1, ncols: int = 1, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)



def provenance(sources: Sequence[str | Path], what: str, fmt: str = "png") -> dict[str, str]:
    """``savefig(metadata=...)`` naming the lotsim version, the analysis and the files it read.

    PNG keeps these as text chunks (plus ``Software``), SVG as Dublin Core: a figure found later says
    what made it.
    """
    from lotsim import __version__

    meta = {"Creator": f"lotsim {__version__}", "Source": ", ".join(str(Path(p).resolve()) for p in sources),
            "Description": f"lotsim analyze: {what}"}
    return {"Software": meta["Creator"], **meta} if fmt == "png" else meta



def _save(fig, out_dir: Path, stem: str, formats: Sequence[str], sources: Sequence[str | Path]) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"plot format {fmt!r} is not allowed; use png or svg")
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, metadata=provenance(sources, stem, fmt))
        paths.append(path)
    return paths



def _movie_writer(out: Path, fps: int):
    from matplotlib import animation

    suffix = out.suffix.lower()
    if suffix == ".gif":
        return animation.PillowWriter(fps=fps)
    if suffix != ".mp4":
        raise ValueError(f"movie file {str(out)!r} must end in .gif or .mp4")
    if not animation.writers.is_available("ffmpeg"):
        try:
            import imageio_ffmpeg
            import matplotlib as mpl

            mpl.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
        except ImportError:
            raise ValueError("MP4 needs ffmpeg, which is not installed; write a GIF instead (--out movie.gif) "
                             "or pip install imageio-ffmpeg") from None
    return animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])



def _phase_colorbar(fig, mappable, ax, label: str = "phase θ mod 2π (rad)"):
    bar = fig.colorbar(mappable, ax=ax, ticks=PHASE_TICKS)
    bar.ax.set_yticklabels(PHASE_TICKLABELS)
    bar.set_label(label)
    return bar



def _replica_label(info: RunInfo, rep: int) -> str:
    k, s = info.couplings[rep], info.seeds[rep]
    parts = [f"replica {rep}"] if not np.isfinite(k) else [f"K={k:.3g}"]
    if s >= 0:
        parts.append(f"seed {s}")
    return ", ".join(parts)



def _coupling_colors(info: RunInfo, reps: Sequence[int]):
    import matplotlib as mpl

    ks = info.couplings[list(reps)]
    finite = np.isfinite(ks)
    lo, hi = (ks[finite].min(), ks[finite].max()) if finite.any() else (0.0, 1.0)
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = mpl.colormaps["viridis"]
    return [cmap(norm(k)) if np.isfinite(k) else "grey" for k in ks], mpl.cm.ScalarMappable(norm=norm, cmap=cmap)



class _Field:
    """Draws one replica's phase field on an axis and updates it frame by frame (snapshot, movie)."""

    def __init__(self, fig, ax, info: RunInfo, positions: np.ndarray | None, omega: np.ndarray | None,
                 edges: np.ndarray | None = None):
        self.info, self.ax = info, ax
        shape = info.shape
        n = info.n_nodes
        grid = info.topology in ("square", "hypercubic") and len(shape) >= 2 and int(np.prod(shape)) == n
        if grid:
            self.kind, self.shape = "image", shape
            self.artist = ax.imshow(np.zeros(shape[:2]).T, origin="lower", cmap=PHASE_CMAP, vmin=0, vmax=2 * math.pi,
                                    interpolation="nearest", extent=(-0.5, shape[0] - 0.5, -0.5, shape[1] - 0.5))
            extra = " (slice at index 0 of the other axes)" if len(shape) > 2 else ""
            ax.set(xlabel="x (lattice axis 0)", ylabel="y (lattice axis 1)" + extra, aspect="equal")
            _phase_colorbar(fig, self.artist, ax)
        elif positions is not None and positions.shape[1] >= 2:
            self.kind = "scatter"
            if edges is not None and edges.shape[0]:
                _draw_bonds(ax, positions[:, :2], edges)
            size = float(np.clip(9000.0 / n, 4, 120))
            self.artist = ax.scatter(positions[:, 0], positions[:, 1], c=np.zeros(n), s=size, cmap=PHASE_CMAP,
                                     vmin=0, vmax=2 * math.pi, edgecolors="none")
            ax.set(xlabel="x (lattice units)", ylabel="y (lattice units)", aspect="equal")
            _phase_colorbar(fig, self.artist, ax)
        elif info.topology in ("ring", "chain") or (positions is not None and positions.shape[1] == 1):
            self.kind = "line"
            nodes = np.arange(n)
            self.artist = ax.scatter(nodes, np.zeros(n), c=np.zeros(n), s=float(np.clip(3000.0 / n, 3, 30)),
                                     cmap=PHASE_CMAP, vmin=0, vmax=2 * math.pi)
            ax.set(xlabel="node j", ylabel="phase θ_j mod 2π (rad)", ylim=(-0.1, 2 * math.pi + 0.1),
                   xlim=(-0.5, n - 0.5), yticks=PHASE_TICKS, yticklabels=PHASE_TICKLABELS)
        else:
            self.kind = "circle"
            c = omega if omega is not None else np.zeros(n)
            centre = float(np.median(c))
            lim = float(np.percentile(np.abs(c - centre), 80)) or 1.0  # robust to Lorentzian tails
            self.artist = ax.scatter(np.ones(n), np.zeros(n), c=c, cmap="coolwarm", vmin=centre - lim,
                                     vmax=centre + lim, s=float(np.clip(6000.0 / n, 4, 40)), alpha=0.7)
            circle = np.linspace(0, 2 * math.pi, 200)
            ax.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.8)
            self.arrow = ax.annotate("", xy=(0, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "lw": 2.0})
            ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xlabel="cos θ_j", ylabel="sin θ_j")
            fig.colorbar(self.artist, ax=ax, extend="both", label="natural frequency ω_j (rad per unit time)")
            ax.text(0.02, 0.02, r"arrow: $r\,e^{i\psi}$", transform=ax.transAxes, fontsize=8)

    def update(self, theta: np.ndarray, time: float, title: str) -> None:
        r, psi = order_parameter(theta)
        wrapped = np.mod(theta, 2 * math.pi)
        if self.kind == "image":
            field = wrapped.reshape(self.shape)
            while field.ndim > 2:
                field = field[..., 0]
            self.artist.set_data(field.T)
        elif self.kind == "scatter":
            self.artist.set_array(wrapped)
        elif self.kind == "line":
            self.artist.set_offsets(np.stack([np.arange(wrapped.size), wrapped], axis=1))
            self.artist.set_array(wrapped)
        else:
            self.artist.set_offsets(np.stack([np.cos(theta), np.sin(theta)], axis=1))
            self.arrow.xy = (r * math.cos(psi), r * math.sin(psi))
        self.ax.set_title(f"{title}\nt = {time:.4g}, r = {r:.3f}", fontsize=10)



def _draw_bonds(ax, positions: np.ndarray, edges: np.ndarray) -> None:
    """The lattice bonds as thin grey lines under the nodes; a bond much longer than the typical one
    wraps around a periodic boundary and is left out."""
    from matplotlib.collections import LineCollection

    segments = positions[edges[:, :2]]  # (e, 2 ends, 2 coordinates)
    length = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    local = length <= 1.5 * np.median(length)
    ax.add_collection(LineCollection(segments[local], colors="0.65", linewidths=0.6, zorder=0, label="bonds"))

