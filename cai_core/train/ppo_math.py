"""PPO's tensor arithmetic: masked means and whitening, GAE, the sequence KL, the adaptive KL coefficient, and
the sums and gradient averages across ranks. torch is imported inside each function: the package stays cheap."""

from __future__ import annotations


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def sum_over_ranks(x):
    """`x` summed over every rank (itself in one process); differentiable nowhere, used on statistics."""
    import torch.distributed as dist

    if distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


def masked_mean(x, mask, over_ranks: bool = False):
    """Mean of `x` where `mask` is 1; with `over_ranks`, of every rank's entries together."""
    import torch

    if over_ranks:
        total = sum_over_ranks(torch.stack([(x * mask).sum().detach(), mask.sum().detach()]))
        return total[0] / total[1].clamp(min=1)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, shift_mean: bool = True):
    """Zero mean (unless not `shift_mean`), unit variance, over the masked entries of every rank."""
    mean = masked_mean(x, mask, over_ranks=True)
    var = masked_mean((x - mean) ** 2, mask, over_ranks=True)
    whitened = (x - mean) * (var + 1e-8).rsqrt()
    return (whitened if shift_mean else whitened + mean) * mask


def average_gradients(params) -> None:
    """Average gradients over the ranks, as DDP would: every rank then takes the same optimiser step."""
    import torch.distributed as dist

    if not distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def sequence_kl(logprobs, ref_logprobs, mask):
    """Each answer's KL to the reference, summed over its tokens, as the run reports it and β follows it.

    Per token it is k3 = (r - 1) - log r with r = π_ref / π at the sampled token (Schulman's "Approximating KL
    divergence"): unbiased for KL(π || π_ref) over tokens sampled from π, like the plain log-ratio log π - log π_ref
    that the reward's penalty uses, but never negative (log r <= r - 1) and of lower variance. The log-ratio of
    one batch goes negative whenever its answers happen to be likelier under the reference, which the card and
    the curve then showed as a negative KL: a reading no KL can have."""
    log_ratio = ref_logprobs - logprobs
    return ((log_ratio.exp() - 1 - log_ratio) * mask).sum(1)


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns; positions past an answer's end carry nothing."""
    import torch

    values = values * mask
    last, advantages = 0.0, []
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages.append(last)
    advantages = torch.stack(advantages[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


class AdaptiveKL:
    """β that follows a target KL (Ziegler et al. 2019): a proportional controller with a clipped error."""

    def __init__(self, beta: float, target: float, horizon: int, adaptive: bool):
        self.beta, self.target, self.horizon, self.adaptive = beta, target, horizon, adaptive

    def update(self, kl: float, episodes: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.beta *= 1 + error * episodes / self.horizon
