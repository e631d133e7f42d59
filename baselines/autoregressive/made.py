"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015), with a softmax
over the L levels of each pixel instead of a Bernoulli.

A ReLU MLP whose weight matrices are multiplied by binary masks so that output d only depends
on the inputs before d in an ordering. Degrees (section 4, 0-based here):

- input pixel d (all E units of its encoding) and output pixel d (its L logits) get the
  degree m(d) = position of d in the ordering;
- hidden unit k of layer l gets m^l(k) ~ Uniform{min_k' m^{l-1}(k'), ..., D - 2};
- masks: M^l[k, k'] = 1[m^l(k) >= m^{l-1}(k')] for hidden layers and
  M^out[d, k] = 1[m(d) > m^L(k)] for the output layer, so the product of masks is strictly
  lower-triangular in the ordering: p(x) = prod_d softmax(MLP(x)_d)[x_d] is normalised.

Options (``num_masks`` = K, ``order``): the default is one mask in the natural (raster) order.
K > 1 trains with the mask of step mod K, cycling through K masks (connectivity-agnostic
training; with ``order = random`` each mask also has its own random ordering: order-agnostic
training, section 4). At test time the likelihood is the average of the K models'
probabilities, p(x) = 1/K sum_k p_k(x) (the paper's ensemble over masks), which is exact for
that mixture; sampling draws a mask per sample uniformly, then samples in its ordering, so
samples come from the same mixture (D network calls per mask used). ``direct_connection``
adds the paper's direct input-to-output masked weights.

Input encoding: by default the scaled value x / (L - 1) (the paper feeds the binary pixel
values); ``input_encoding = one_hot`` gives L inputs per pixel, which overfits the 1,500
training digits within the quick budget (about 2.30 test bits/dim against 2.02).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from baselines.autoregressive.base import DiscreteAutoregressive, ancestral_sample
from baselines.common.masked import (
    INPUT_ENCODINGS,
    MaskedLinear,
    degree_mask,
    encode_levels,
    encoding_width,
)
from bench.errors import GenbenchError
from bench.method import DataSpec, from_levels, scale_table
from bench.registry import register_method

ORDERS = ("natural", "random")
HIDDEN_SIZES = {"8x8": (256,), "28x28": (500,), "32x32": (1000, 1000)}


def made_degrees(
    dims: int, hidden_sizes: tuple[int, ...], order: Tensor, generator: torch.Generator
) -> list[Tensor]:
    """Degrees of the input pixels (position in ``order``) and of every hidden layer."""
    # explicit CPU tensors: masks are data, also under a meta-device trial build
    degrees = [torch.empty(dims, dtype=torch.long, device="cpu")]
    degrees[0][order] = torch.arange(dims, device="cpu")
    for size in hidden_sizes:
        low = int(degrees[-1].min())
        high = max(low, dims - 2)  # a unit of degree D-1 would feed no output
        degrees.append(torch.randint(low, high + 1, (size,), generator=generator, device="cpu"))
    return degrees


@register_method("made")
class MADE(DiscreteAutoregressive):
    summary = "MADE: masked MLP autoencoder with valid autoregressive connectivity"

    hparam_choices = {"input_encoding": INPUT_ENCODINGS, "order": ORDERS}

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {
            "hidden_sizes": scale_table(HIDDEN_SIZES, spec, "made's width table"),
            "input_encoding": "scaled",
            "num_masks": 1,
            "order": "natural",
            "direct_connection": False,
            "mask_seed": 0,
            "lr": 3e-3,
            "weight_decay": 0.0,
        }

    def __init__(
        self,
        spec: DataSpec,
        hidden_sizes: tuple[int, ...] = (256,),
        input_encoding: str = "scaled",
        num_masks: int = 1,
        order: str = "natural",
        direct_connection: bool = False,
        mask_seed: int = 0,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(spec)
        if order not in ORDERS:
            raise GenbenchError(f"unknown made.order {order!r}. Valid: {', '.join(ORDERS)}")
        if num_masks < 1:
            raise GenbenchError(f"made.num_masks must be >= 1, got {num_masks}")
        self.input_encoding = input_encoding
        self.num_masks = num_masks
        dims, levels = spec.dims, spec.num_levels
        width = encoding_width(levels, input_encoding)
        hidden_sizes = tuple(int(size) for size in hidden_sizes)
        generator = torch.Generator().manual_seed(mask_seed)
        orders, per_mask = [], []
        for _ in range(num_masks):
            ordering = (
                torch.arange(dims, device="cpu")
                if order == "natural"
                else torch.randperm(dims, device="cpu")
            )
            orders.append(ordering)
            per_mask.append(made_degrees(dims, hidden_sizes, ordering, generator))
        #: orders[k][t]: the pixel generated at step t under mask k
        self.register_buffer("orders", torch.stack(orders))

        def unit_degrees(layer: int, k: int) -> Tensor:
            # input and output layers: each pixel's degree repeated over its units
            if layer == 0:
                return per_mask[k][0].repeat_interleave(width)
            return per_mask[k][layer]

        out_degrees = [d[0].repeat_interleave(levels) for d in per_mask]
        sizes = [dims * width, *hidden_sizes]
        self.hidden = nn.ModuleList(
            MaskedLinear(
                sizes[i],
                sizes[i + 1],
                torch.stack(
                    [
                        degree_mask(unit_degrees(i, k), unit_degrees(i + 1, k), False)
                        for k in range(num_masks)
                    ]
                ),
            )
            for i in range(len(hidden_sizes))
        )
        last = len(hidden_sizes)
        self.output = MaskedLinear(
            sizes[-1],
            dims * levels,
            torch.stack(
                [degree_mask(unit_degrees(last, k), out_degrees[k], True) for k in range(num_masks)]
            ),
        )
        self.direct = None
        if direct_connection:
            self.direct = MaskedLinear(
                sizes[0],
                dims * levels,
                torch.stack(
                    [
                        degree_mask(unit_degrees(0, k), out_degrees[k], True)
                        for k in range(num_masks)
                    ]
                ),
            )
        self.setup_optimizer(lr, weight_decay)

    def conditional_log_probs(self, levels: Tensor, mask_index: int = 0) -> Tensor:
        inputs = encode_levels(levels, self.spec.num_levels, self.input_encoding)  # (B, D*E)
        hidden = inputs
        for layer in self.hidden:
            hidden = torch.relu(layer(hidden, mask_index))  # (B, H_l)
        logits = self.output(hidden, mask_index)  # (B, D*L)
        if self.direct is not None:
            logits = logits + self.direct(inputs, mask_index)
        return logits.view(len(levels), self.spec.dims, self.spec.num_levels).log_softmax(-1)

    def _log_likelihood_under(self, levels: Tensor, mask_index: int) -> Tensor:
        log_probs = self.conditional_log_probs(levels, mask_index)  # (B, D, L)
        return log_probs.gather(2, levels.unsqueeze(2)).sum((1, 2))

    def log_likelihood(self, x: Tensor) -> Tensor:
        """log (1/K sum_k p_k(x)): the ensemble over the K masks (exact for the mixture)."""
        levels = self._levels(x)
        per_mask = torch.stack(
            [self._log_likelihood_under(levels, k) for k in range(self.num_masks)]
        )
        return per_mask.logsumexp(0) - math.log(self.num_masks)  # (K, B) -> (B,)

    def training_log_likelihood(self, levels: Tensor, step: int) -> Tensor:
        return self._log_likelihood_under(levels, step % self.num_masks)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """A mask per sample, uniformly (the mixture), then ancestral sampling in its order."""
        device = self.device
        choice = torch.randint(self.num_masks, (n,), generator=generator, device=generator.device)
        choice = choice.to(device)
        levels = torch.zeros(n, self.spec.dims, dtype=torch.long, device=device)
        self.last_nfe = 0
        for k in range(self.num_masks):
            rows = (choice == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            levels[rows] = ancestral_sample(
                len(rows),
                self.spec.dims,
                self.orders[k].tolist(),
                lambda lv, d, k=k: self.conditional_log_probs(lv, k)[:, d],
                generator,
                device,
            )
            self.last_nfe += self.spec.dims
        return from_levels(levels, self.spec.num_levels).view(n, *self.spec.shape)

    def sample_settings(self) -> dict[str, Any]:
        return {"sampler": "ancestral", "mask": "uniform over the K masks", "K": self.num_masks}

    def likelihood_settings(self) -> dict[str, Any]:
        return {"exact": True, "masks_averaged": self.num_masks}
