"""Predictor-corrector sampling (Song et al. 2021, score_sde's pc_sampler):
at each time, ``n_correct`` Langevin corrector steps with target ``snr``, then
one ancestral predictor step (DDPM's posterior, i.e. DDIM with eta = 1, which
is score_sde's reverse-diffusion predictor for VP and VE alike)."""

from __future__ import annotations

from diffaccel.solvers.dpm_solver_pp import ddim_plan
from diffaccel.solvers.plan import LangevinRow, Plan, score_coeffs


def pc_plan(
    schedule,
    times,
    *,
    snr: float = 0.16,
    n_correct: int = 1,
    corrector_alpha: float = 1.0,
    prediction_type: str = "epsilon",
) -> Plan:
    if not snr >= 0:
        raise ValueError(f"pc: 'snr' must be >= 0, got {snr}")
    if not isinstance(n_correct, int) or n_correct < 0:
        raise ValueError(f"pc: 'n_correct' must be an integer >= 0, got {n_correct!r}")
    predictor = ddim_plan(schedule, times, eta=1.0, prediction_type=prediction_type)
    rows = []
    for row in predictor.rows:
        alpha, sigma = float(schedule.alpha(row.t)), float(schedule.sigma(row.t))
        coeffs = score_coeffs(prediction_type, alpha, sigma)
        rows.extend(LangevinRow(t=row.t, score_coeffs=coeffs, snr=snr, alpha=corrector_alpha) for _ in range(n_correct))
        rows.append(row)
    return Plan(
        "pc",
        rows,
        2,
        times,
        dict(snr=snr, n_correct=n_correct, corrector_alpha=corrector_alpha, prediction_type=prediction_type),
    )
