"""Flow sampling pieces: the Euler schedule and BAGEL's classifier-free guidance combination.

Schedule (BAGEL ``generate_image``): t_i = linspace(1, 0, N), shifted t' = s t / (1 + (s - 1) t),
N - 1 Euler steps x <- x - v(t_i) * (t_i - t_{i+1}) through the fused ``euler_step``.

CFG (BAGEL): with v the conditional velocity, v_text the velocity without the last text and v_img
the one without images, inside ``cfg_interval`` (lo < t <= hi):

    v' = v_text + s_text (v - v_text);   v' = v_img + s_img (v' - v_img)   (when s_img != 1)
    renorm: v' *= clamp(|v| / |v'|, renorm_min, 1), |.| over the whole image ("global") or per
    latent token over channels ("token", BAGEL's "channel"); "none" skips it.

Outside the interval (or with both scales 1) v is used unchanged.

Stochastic steps (``sde_noise`` = eta in (0, 1], :func:`stochastic_step`), DDIM's eta for the linear
path x_t = t e + (1 - t) x0: the step from t to t' predicts x0 = x - t v and e = x + (1 - t) v and
draws x' from the Gaussian whose mean is (1 - t') x0 + sqrt(t'^2 - s^2) e and whose std is
s = eta * t' * sqrt(1 - r^2), r = (1 - t) t' / ((1 - t') t). At eta = 1 that is the posterior of x_t'
given x_t and x0 under the Markov forward process with these marginals (DDPM's ancestral step); at
eta = 0 it is the Euler step exactly. Fresh noise pulls a sample back toward the training marginals,
which an imperfect velocity lets an ODE sample drift off (Karras et al. 2022, "stochastic sampling").
"""

from __future__ import annotations

import math

import torch

from procpaint.kernels.flow import euler_step, shift_timesteps

__all__ = ["cfg_active", "combine_cfg", "euler_step", "schedule", "stochastic_step"]


def schedule(num_steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, dt): the num_steps - 1 times the velocity is evaluated at and the step sizes, float32."""
    t = shift_timesteps(torch.linspace(1.0, 0.0, num_steps, dtype=torch.float64), shift)
    return t[:-1].float(), (t[:-1] - t[1:]).float()


def cfg_active(t: float, scale: float, interval: tuple[float, float]) -> bool:
    """Whether a guidance branch of ``scale`` runs at time t (BAGEL: lo < t <= hi)."""
    return scale != 1.0 and interval[0] < t <= interval[1]


def combine_cfg(v: torch.Tensor, v_text: torch.Tensor | None, v_img: torch.Tensor | None, *,
                text_scale: float, image_scale: float, renorm: str, renorm_min: float = 0.0
                ) -> torch.Tensor:
    """v, v_text, v_img (N, D) -> guided (N, D); a branch given as None is not applied."""
    out = v
    if v_text is not None:
        out = v_text + text_scale * (out - v_text)
    if v_img is not None:
        out = v_img + image_scale * (out - v_img)
    if out is v or renorm == "none":
        return out
    if renorm == "global":
        ratio = v.norm() / (out.norm() + 1e-8)
    elif renorm == "token":
        ratio = v.norm(dim=-1, keepdim=True) / (out.norm(dim=-1, keepdim=True) + 1e-8)   # (N, 1)
    else:
        raise ValueError(f"cfg_renorm must be none, global or token, got {renorm!r}")
    return out * ratio.clamp(min=renorm_min, max=1.0)


def stochastic_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, eta: float,
                    noise: torch.Tensor) -> torch.Tensor:
    """One step t -> t_next < t (module docstring) with ``noise`` (standard normal, like x) for the
    fresh part; ``eta = 0`` equals ``x - v (t - t_next)``."""
    r = (1.0 - t) * t_next / ((1.0 - t_next) * t) if t > 0 and t_next < 1 else 0.0
    s = eta * t_next * math.sqrt(max(0.0, 1.0 - r * r))
    x0 = x - t * v
    e = x + (1.0 - t) * v
    return (1.0 - t_next) * x0 + math.sqrt(max(t_next * t_next - s * s, 0.0)) * e + s * noise
