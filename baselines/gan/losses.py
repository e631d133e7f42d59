"""The GAN objectives and critic penalties as small pure functions of critic scores, images
and gradients, so that each can be checked against a hand-computed value.

Sign convention everywhere: the critic gives HIGH scores to real images, and every function
returns a loss to MINIMISE. Images are in the networks' [-1, 1] space.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_GENERATOR_LOSSES = ("non-saturating", "minimax")
QP_DISTANCES = ("l1", "l2")


# -- Goodfellow et al. 2014 ------------------------------------------------------------------
def gan_critic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))] with D = sigmoid(logits) (eq. 1, the discriminator
    ascends V(D, G)); softplus form for stability: -log sigmoid(a) = softplus(-a)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_generator_loss(fake_logits: Tensor, variant: str) -> Tensor:
    """Minimax: E[log(1 - D(G(z)))] (eq. 1) = -E[softplus(a)]. Non-saturating (section 3):
    -E[log D(G(z))] = E[softplus(-a)], same fixed point, strong gradients early on."""
    if variant == "minimax":
        return -F.softplus(fake_logits).mean()
    if variant == "non-saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN generator loss {variant!r}; valid: {GAN_GENERATOR_LOSSES}")


# -- Wasserstein family (Arjovsky et al. 2017; Gulrajani et al. 2017; Wu et al. 2018) --------
def wasserstein_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """-(E[f(x)] - E[f(G(z))]): the critic maximises the Kantorovich-Rubinstein estimate."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    """-E[f(G(z))]."""
    return -fake_scores.mean()


def interpolates(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat = alpha x + (1 - alpha) x_tilde, alpha (B,) ~ U[0, 1] (WGAN-GP Algorithm 1)."""
    alpha = alpha.view(-1, *([1] * (real.dim() - 1)))
    return alpha * real + (1 - alpha) * fake


def input_gradient_norms(critic: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """||grad_x f(x)||_2 per point (B,), differentiable w.r.t. the critic's parameters
    (the penalties are minimised through it: double back-propagation)."""
    points = points.detach().requires_grad_(True)
    scores = critic(points)
    (grads,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    return grads.flatten(1).norm(2, dim=1)


def gradient_penalty(grad_norms: Tensor, weight: float) -> Tensor:
    """lambda E[(||grad f(x_hat)||_2 - 1)^2] (WGAN-GP eq. 3)."""
    return weight * (grad_norms - 1).pow(2).mean()


def wasserstein_div_penalty(grad_norms: Tensor, k: float, p: float) -> Tensor:
    """k E[||grad f(x_hat)||^p] (Wu et al. 2018, the W-div term; k = 2, p = 6)."""
    return k * grad_norms.pow(p).mean()


# -- Miyato et al. 2018 ------------------------------------------------------------------------
def hinge_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (SNGAN's hinge loss)."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


# the hinge generator loss -E[D(G(z))] is wasserstein_generator_loss


# -- Su 2018, GAN-QP ---------------------------------------------------------------------------
def qp_distance(real: Tensor, fake: Tensor, distance: str) -> Tensor:
    """d(x_r, x_f) per pair (B,): the per-pixel MEAN absolute difference ("l1") or the root
    mean square difference ("l2"), as in the paper's code."""
    diff = (real - fake).flatten(1)
    if distance == "l1":
        return diff.abs().mean(1)
    if distance == "l2":
        return diff.pow(2).mean(1).sqrt()
    raise ValueError(f"unknown GAN-QP distance {distance!r}; valid: {QP_DISTANCES}")


def qp_critic_loss(
    real_scores: Tensor, fake_scores: Tensor, distance: Tensor, qp_lambda: float
) -> Tensor:
    """-E[T(x_r) - T(x_f) - (T(x_r) - T(x_f))^2 / (2 lambda d(x_r, x_f))] (GAN-QP, with
    T(x_r, x_f) = T(x_r)): the quadratic potential replaces any Lipschitz constraint.
    ``distance`` (B,) pairs real i with fake i."""
    gap = real_scores - fake_scores
    return (-gap + gap.pow(2) / (2 * qp_lambda * distance)).mean()


def qp_generator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """E[T(x_r) - T(G(z))] (GAN-QP); only the fake term carries a gradient to G."""
    return (real_scores - fake_scores).mean()
