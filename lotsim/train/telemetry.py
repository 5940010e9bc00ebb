"""Phase telemetry during training -> ``telemetry.h5`` (H5MD, :class:`lotsim.io.TrajectoryWriter`).

Every ``train.telemetry_every`` steps (and at step 0 and at the end) the model, in eval mode and
without gradients, reads a FIXED probe batch: the first ``train.telemetry_sequences`` sequences of
the validation split. For every layer whose attention reports phases (its intermediates are a
:class:`~lotsim.model.attention.PhaseIntermediates`, ``theta`` (b, t, n)) one frame is appended to
the particles group ``layer_<ii>``:

* ``phase/value [frame, node, replica]`` (read back as [frame, replica, node]): the layer's
  oscillator phases theta (after the Kuramoto steps on the head lattice, before the sequence
  advance), wrapped to [0, 2 pi) (declared
  ``phase_storage = "wrapped"``: consecutive frames are different models, not a time series);
  **replica = probe token** (replica ``r`` is sequence ``r // t``, position ``r % t``), **node =
  head** (the oscillators on the head lattice);
* ``step``/``time``: the optimiser step (time = step);
* observables ``/observables/layer_<ii>/order_parameter [frame, replica]`` (r across the head
  lattice per token) and, when the attention reports it, ``local_order_parameter [frame, replica,
  head]``;
* static data: per replica ``sequence``, ``token_position``, ``token``; per node the lattice
  coordinates ``lattice_position``; ``/connectivity/layer_<ii>`` the head lattice's edges.

The file holds the resolved recipe (``/parameters``). Frames are flushed with every checkpoint; a
resumed run truncates frames after the checkpoint's step and continues appending.
Attention variants without phases (``vanilla``) produce no groups, and then no file is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lotsim.io import TrajectoryWriter
from lotsim.model.attention import PhaseIntermediates


def phase_layers(intermediates) -> list[tuple[int, PhaseIntermediates]]:
    """(layer index, intermediates) of the layers that report phases (:class:`PhaseIntermediates`)."""
    return [(i, inter) for i, inter in enumerate(intermediates or []) if isinstance(inter, PhaseIntermediates)]


class PhaseTelemetry:
    """Appends probe-batch phase frames to an H5MD file (see the module docstring).

    Args:
        path: ``telemetry.h5``.
        probe: (b, t) token ids of the probe batch.
        recipe_toml: resolved recipe text (stored under ``/parameters``).
        seed: run seed.
        git_commit: source revision.
        resume_step: continue an existing file, dropping frames after this step.
    """

    def __init__(self, path: str | Path, probe: torch.Tensor, *, recipe_toml: str = "", seed: int = 0,
                 git_commit: str = "", resume_step: int | None = None):
        self.path = Path(path)
        self.probe = probe
        self._writer: TrajectoryWriter | None = None
        self._header = {"recipe_toml": recipe_toml, "seed": seed, "git_commit": git_commit}
        self._resume_step = resume_step
        self.enabled = True

    def _open(self) -> TrajectoryWriter:
        if self._writer is None:
            if self._resume_step is not None and self.path.is_file():
                self._writer = TrajectoryWriter(self.path, mode="a")
                self._writer.truncate_after(self._resume_step)
            else:
                self._writer = TrajectoryWriter(self.path, overwrite=True, unwrapped=False,
                                                parameters={"probe": "validation batch 0"}, **self._header)
        return self._writer

    @torch.no_grad()
    def record(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Run the probe through ``model`` (eval mode) and append one frame per phase layer.

        Returns:
            Scalar summaries per layer (``layer_00/order_parameter``...) for the metrics log.
        """
        if not self.enabled:
            return {}
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            out = model(self.probe.to(device), return_intermediates=True)
        finally:
            model.train(was_training)
        layers = phase_layers(out.intermediates)
        if not layers:
            self.enabled = False  # nothing oscillates in this model: no file
            return {}
        writer = self._open()
        b, t = self.probe.shape
        summary: dict[str, float] = {}
        for i, inter in layers:
            group = f"layer_{i:02d}"
            theta = inter.theta.detach().float().cpu()  # (b, t, h)
            h = theta.shape[-1]
            local = inter.local_order_parameter
            if group not in writer.groups:
                self._add_group(writer, group, model, i, b, t, h, local is not None)
            obs = {"order_parameter": inter.order_parameter.detach().float().cpu().reshape(1, b * t).numpy()}
            if local is not None:
                obs["local_order_parameter"] = local.detach().float().cpu().reshape(1, b * t, h).numpy()
            phase = np.mod(theta.reshape(1, b * t, h).numpy(), 2 * math.pi)
            writer.append(group, np.array([step]), np.array([float(step)]), phase, obs)
            summary.update({f"{group}/{k}": float(v) for k, v in inter.summary().items()})
        return summary

    def _add_group(self, writer, group, model, layer, b, t, h, has_local) -> None:
        observables = {"order_parameter": ((), np.float32)}
        if has_local:
            observables["local_order_parameter"] = ((h,), np.float32)
        node_data, edges, weights = {}, None, None
        lattice = getattr(getattr(model.blocks[layer], "attn", None), "lattice", None) \
            if hasattr(model, "blocks") else None
        if lattice is not None and getattr(lattice, "n", None) == h:
            node_data["lattice_position"] = np.asarray(lattice.positions, dtype=np.float64)
            senders, receivers, w = lattice.edge_list()
            edges, weights = np.stack([senders, receivers], axis=1).astype(np.int64), np.asarray(w, np.float64)
        probe = self.probe.cpu().numpy()
        replica_data = {
            "sequence": np.repeat(np.arange(b), t).astype(np.int64),
            "token_position": np.tile(np.arange(t), b).astype(np.int64),
            "token": probe.reshape(-1).astype(np.int64),
        }
        writer.add_particles(group, n_replicas=b * t, n_nodes=h, dtype=np.float32, node_data=node_data,
                             replica_data=replica_data, edges=edges, weights=weights, observables=observables)

    def flush(self) -> None:
        """Write buffered frames to disk (called with every checkpoint)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
