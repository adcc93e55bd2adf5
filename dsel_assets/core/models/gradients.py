"""Per-example LoRA gradients from one batched backward pass, and LESS's Adam features.

For a linear map ``y = W x`` applied at every position ``t``, the gradient of example
``b``'s loss is ``sum_t dL/dy[b,t] x[b,t]^T``. LoRA's ``lora_A`` and ``lora_B`` are such
maps, so hooks that keep each one's input and output gradient give every example's
gradient at once (the Opacus / "per-sample gradient" identity). Padded positions carry a
zero output gradient (no loss, masked attention), so padding on either side is harmless.
Each example's loss is its own mean over response tokens, so summing the batch's losses
before ``backward`` leaves every example's gradient unmixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lora import lora_parameters
from .sft import per_example_loss

if TYPE_CHECKING:
    import torch


class PerExampleGradients:
    """Context manager hooking every LoRA matrix of ``model``; :meth:`compute` returns the
    flattened per-example gradients [B, P] in :func:`lora_parameters` order."""

    def __init__(self, model):
        self.model = model
        self.names = [name for name, _ in lora_parameters(model)]
        if not self.names:
            raise ValueError("model: no trainable LoRA parameters; add adapters first")
        modules = dict(model.named_modules())
        self.modules = [modules[name.removesuffix(".weight")] for name in self.names]
        self.sizes = [p.numel() for _, p in lora_parameters(model)]
        self._inputs: dict[int, torch.Tensor] = {}
        self._grads: dict[int, torch.Tensor] = {}
        self._handles: list = []

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def __enter__(self) -> PerExampleGradients:
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._forward_hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, index: int):
        def hook(module, inputs, output):
            self._inputs[index] = self._kept_input(index, inputs[0].detach())

            def keep(grad):
                self._grads[index] = self._kept_grad(index, grad.detach())

            output.register_hook(keep)

        return hook

    def _kept_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """What the forward hook keeps of matrix ``index``'s input [B, T, in]."""
        return x

    def _kept_grad(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        """What the backward hook keeps of matrix ``index``'s output gradient [B, T, out]."""
        return grad

    def _example_rows(self, index: int) -> torch.Tensor:
        """Matrix ``index``'s per-example gradient [B, out * in] from what the hooks kept."""
        import torch

        out_grad, inp = self._grads[index].float(), self._inputs[index].float()
        return torch.einsum("bto,bti->boi", out_grad, inp).reshape(len(inp), -1)

    def compute(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-example gradients [B, P] float32, per-example losses [B])."""
        import torch

        self._inputs.clear()
        self._grads.clear()
        losses = per_example_loss(self.model, batch)
        losses.sum().backward()
        parts = [self._example_rows(index) for index in range(len(self.modules))]
        self.model.zero_grad(set_to_none=True)
        self._inputs.clear()
        self._grads.clear()
        return torch.cat(parts, dim=1), losses.detach()


def adam_features(
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    textbook: bool = False,
) -> torch.Tensor:
    """LESS's Adam direction for one step from the saved state, without bias correction:
    ``m' / sqrt(v' + eps)`` (eps inside the root, as LESS does); ``textbook=True`` gives
    ``m' / (sqrt(v') + eps)``. With m = v = 0: ``0.1 g / sqrt(0.001 g^2 + 1e-8)``."""
    import torch

    m = beta1 * exp_avg + (1 - beta1) * grads
    v = beta2 * exp_avg_sq + (1 - beta2) * grads * grads
    return m / (torch.sqrt(v) + eps) if textbook else m / torch.sqrt(v + eps)
