"""What a solver produces: a plan, the per-model-evaluation table the loop runs.

A plan works on a few same-shaped buffers: slot 0 holds the state (it starts
as the initial noise and ends as the sample); other slots hold history (earlier
data predictions d, or earlier states for single-step methods). Each row says
where to call the model, on which buffer, and how to combine it, as one
``ei_step``::

    d           = c_x * x + c_m * model(x, t)           x = buffers[row.x_slot]
    x_next      = a * x + b_0 * d + sum_j b_j * buffers[row.history[j]] + s * noise
    buffers[row.out_slot] = x_next;  buffers[row.d_slot] = d

Every number is float64 and depends only on the schedule and the step index,
never on the data, so the loop has nothing to synchronize on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple, Union

import torch

from diffaccel.transfer import to_device

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


def grid_values(schedule, times):
    """alpha, sigma and the variance-exploding noise level v = sigma / alpha at
    each grid time, as float lists (plans are built on the host, in float64)."""
    alpha = schedule.alpha(times).tolist()
    sigma = schedule.sigma(times).tolist()
    return alpha, sigma, [s / a for s, a in zip(sigma, alpha)]


def data_prediction_coeffs(prediction_type: str, alpha: float, sigma: float) -> Tuple[float, float]:
    """(c_x, c_m) with x0 = c_x * x + c_m * model_out, for a model of this
    prediction type evaluated where x = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "sample":
        return 0.0, 1.0
    if prediction_type == "v_prediction":  # v = alpha eps - sigma x0
        norm = alpha * alpha + sigma * sigma
        return alpha / norm, -sigma / norm
    if prediction_type == "flow":  # v = eps - x0 on x = (1 - t) x0 + t eps
        return 1.0, -sigma
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


@dataclass(frozen=True)
class Row:
    """One model evaluation and the fused update that follows it."""

    t: float  # model time, in the schedule's own units
    coeffs: Tuple[float, ...]  # [c_x, c_m, a, b_0, b_1 .. b_k, s]
    x_slot: int = 0
    out_slot: int = 0
    d_slot: int = 1
    history: Tuple[int, ...] = ()
    noise: bool = False
    order: int = 1  # the solver order this row realizes (for inspection)

    def __post_init__(self):
        if len(self.coeffs) != 5 + len(self.history):
            raise ValueError(f"Row: {len(self.coeffs)} coefficients for {len(self.history)} history slots")


@dataclass(frozen=True)
class LangevinRow:
    """One model evaluation and a Langevin corrector step at the same time
    (predictor-corrector sampling): score = c_x * x + c_m * model(x, t) in one
    multistep_combine, then langevin_correct(x, score, snr, alpha) in place."""

    t: float
    score_coeffs: Tuple[float, float]
    snr: float
    alpha: float = 1.0
    x_slot: int = 0
    mean_slot: int = 1  # receives x_mean, the update before its noise

    @property
    def coeffs(self) -> Tuple[float, ...]:
        return self.score_coeffs


def score_coeffs(prediction_type: str, alpha: float, sigma: float) -> Tuple[float, float]:
    """(c_x, c_m) with score = grad log p_t(x) = (alpha x0 - x) / sigma^2 = c_x x + c_m out."""
    c_x, c_m = data_prediction_coeffs(prediction_type, alpha, sigma)
    return (alpha * c_x - 1.0) / sigma**2, alpha * c_m / sigma**2


@dataclass
class Plan:
    """The table a sampler runs: rows, how many buffers they use, and the
    times they step between (for callbacks and inspection)."""

    sampler: str
    rows: List[Union[Row, LangevinRow]]
    num_buffers: int
    times: torch.Tensor  # the grid t_0 > t_1 > ... > t_N
    options: dict = field(default_factory=dict)
    # Variance-exploding noise level sigma_t / alpha_t of each row's model time:
    # k-diffusion's "sigma", reported to callbacks. Filled by diffaccel.solvers.plan().
    row_sigmas: List[float] = field(default_factory=list)

    def __repr__(self) -> str:
        lines = [
            f"Plan({self.sampler}, {len(self.rows)} model calls, {self.num_buffers} buffers, options={self.options})"
        ]
        for i, r in enumerate(self.rows):
            c = ", ".join(f"{v:+.6g}" for v in r.coeffs)
            if isinstance(r, LangevinRow):
                lines.append(
                    f"  {i:3d} t={r.t:<12.6g} langevin snr={r.snr} alpha={r.alpha:.6g} x=b{r.x_slot}  score=[{c}]"
                )
                continue
            lines.append(
                f"  {i:3d} t={r.t:<12.6g} order={r.order} x=b{r.x_slot} hist={list(r.history)} "
                f"-> x:b{r.out_slot} d:b{r.d_slot}"
                f"{' +noise' if r.noise else ''}  [{c}]"
            )
        return "\n".join(lines)

    def structure(self) -> Tuple:
        """Everything about the plan except its numbers: the kind of each row,
        its buffer slots, history, noise and coefficient count (and a Langevin
        row's snr and alpha, which the op takes as numbers). Two plans with the
        same structure run on the same captured graph with refilled tables."""
        return (
            self.num_buffers,
            tuple(
                ("langevin", r.x_slot, r.mean_slot, r.snr, r.alpha)
                if isinstance(r, LangevinRow)
                else ("row", r.x_slot, r.out_slot, r.d_slot, r.history, r.noise, len(r.coeffs))
                for r in self.rows
            ),
        )

    def device_tables(self, device, batch: int, time_dtype: torch.dtype = torch.float32) -> "PlanTables":
        """The plan's numbers on the device, copied once without a host synchronization."""
        width = max((len(r.coeffs) for r in self.rows), default=0)
        coeff_table = torch.empty((len(self.rows), width), dtype=torch.float64, device=device)
        time_table = torch.empty((len(self.rows), batch), dtype=time_dtype, device=device)
        tables = PlanTables(
            coeff_table,
            time_table,
            [coeff_table[i, : len(r.coeffs)] for i, r in enumerate(self.rows)],
            list(time_table),
        )
        tables.fill(self)
        return tables


@dataclass
class PlanTables:
    """A plan's coefficient rows and model times on the device: per model call,
    a view of one row of ``coeff_table`` ([rows, widest row], float64) and of
    ``time_table`` ([rows, batch]). A captured CUDA graph reads them by address,
    so another plan of the same structure is run by refilling them (fill)."""

    coeff_table: torch.Tensor
    time_table: torch.Tensor
    coeffs: List[torch.Tensor]
    times: List[torch.Tensor]

    def fill(self, plan: Plan) -> None:
        width = self.coeff_table.shape[1]
        rows = [list(r.coeffs) + [0.0] * (width - len(r.coeffs)) for r in plan.rows]
        flat = [v for row in rows for v in row]
        self.coeff_table.copy_(to_device(flat, self.coeff_table.device).view(self.coeff_table.shape), non_blocking=True)
        times = to_device([r.t for r in plan.rows], self.time_table.device, self.time_table.dtype)
        self.time_table.copy_(times[:, None].expand(self.time_table.shape), non_blocking=True)
