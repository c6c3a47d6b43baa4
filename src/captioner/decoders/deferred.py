"""A linear layer applied at every step of a recurrence whose weight gradient is computed once, at the end.

Autograd computes the weight gradient of ``x_t @ W^T`` at every step t separately (a thin matrix product
with only batch-size rows) and adds the T results into one buffer: T small products and T additions of
the whole weight matrix. With :class:`DeferredLinear` every step only passes the gradient on to ``x_t``
and keeps ``(grad_t, x_t)``; once the backward pass has been through all steps, the weight gradient
is computed as one large product ``[grad_1; ...; grad_T]^T [x_1; ...; x_T]``. Same result, less time
(docs/performance.md). Used for the recurrent products of :class:`SoftAttentionDecoder.teacher_forcing`.

    lin = DeferredLinear(weight)       # once, before the loop
    for t in ...: y = lin(x_t)         # x_t @ weight^T

The ordering is autograd's own: ``_Collect`` produces the weight every step uses, so its backward runs
only after the backward of every step. Under autocast (mixed precision) it falls back to ``F.linear``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


class DeferredLinear:
    def __init__(self, weight: Tensor) -> None:
        self.plain = torch.is_autocast_enabled(weight.device.type) or not torch.is_grad_enabled()
        self._saved: list[tuple[Tensor, Tensor]] = []  # (grad of output, input) per step, filled in backward
        self.weight = weight if self.plain else _Collect.apply(weight, self._saved)

    def __call__(self, x: Tensor) -> Tensor:
        if self.plain:
            return F.linear(x, self.weight)
        return _StepLinear.apply(x, self.weight, self._saved)  # [B, out]


class _Collect(torch.autograd.Function):
    """Identity on the weight; its backward computes the weight gradient of all steps at once."""

    @staticmethod
    def forward(ctx, weight: Tensor, saved: list) -> Tensor:
        ctx.saved = saved
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: Tensor | None) -> tuple[Tensor | None, None]:
        if not ctx.saved:
            return grad, None
        grads, inputs = zip(*ctx.saved, strict=True)
        ctx.saved.clear()
        dw = torch.cat(grads).t() @ torch.cat(inputs)  # [out, T*B] @ [T*B, in] -> [out, in]
        return dw if grad is None else grad + dw, None


class _StepLinear(torch.autograd.Function):
    """``x @ weight^T`` whose backward returns only the input's gradient and saves the rest for _Collect."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, saved: list) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.saved = saved
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        ctx.saved.append((grad, x))
        return (grad @ weight if ctx.needs_input_grad[0] else None), None, None
