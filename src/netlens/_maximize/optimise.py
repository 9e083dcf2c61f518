"""The optimisation of activation maximisation: Adam steps on the parameters, watched for NaN.

:func:`optimise` runs the loop: each step makes the inputs (:mod:`.param`), transforms them
(:mod:`.transforms`), evaluates the objective (:mod:`.readout`), adds the ``l2`` and ``tv``
penalties, and steps Adam on the parametrisation alone. :class:`FiniteWatch` stops the run at
the step where a NaN or infinite value appears.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._core.checks import non_finite
from .._core.errors import NetlensValueError
from .._core.model import depends_on, progress_bar
from .options import Options
from .param import Parametrization, spatial_dims

__all__ = ["Adam", "FiniteWatch", "optimise", "total_variation"]

# Whether image batches go to the model in the channels-last layout on the CPU (see optimise).
_CHANNELS_LAST = True
# Off the CPU, how many steps run between checks that everything stayed finite (a check waits
# for the device); a NaN is still reported at the step it appeared.
_CHECK_EVERY = 16


class Adam:
    """Adam (Kingma & Ba 2015) on one tensor, computed as ``torch.optim.Adam`` does by default.

    Written out because the first ``torch.optim`` optimizer of a process imports
    ``torch._dynamo``, seconds of work for what is a few tensor operations per step here.
    """

    def __init__(self, param: torch.Tensor, lr: float) -> None:
        self.param = param
        self.lr = lr
        self.betas = (0.9, 0.999)
        self.eps = 1e-8
        self.steps = 0
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.steps)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**self.steps) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)


class FiniteWatch:
    """Stops the optimisation at the step where a NaN or infinite value appears.

    Each step records, per input, whether its pixels (before transforms), its objective value
    and its gradient are finite. On the CPU they are checked at once; elsewhere every
    ``_CHECK_EVERY`` steps (a check waits for the device), still naming the first bad step.
    """

    _KINDS = ("inputs", "objective", "gradient")

    def __init__(
        self,
        steps: int,
        copies: int,
        names: list[str],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.steps = steps
        self.copies = copies
        self.names = names
        self.dtype = dtype
        self.every = 1 if device.type == "cpu" else _CHECK_EVERY
        self.flags: list[torch.Tensor] = []  # per step: (3, n) bools
        self.checked = 0

    def check(
        self,
        step: int,
        current: torch.Tensor,
        history: list[torch.Tensor],
        gradient: torch.Tensor,
    ) -> None:
        """Record step ``step``'s flags; raise if a checked step holds a non-finite value."""
        self.flags.append(
            torch.stack(
                [
                    torch.isfinite(current).flatten(1).all(1),
                    torch.isfinite(history[step]),
                    torch.isfinite(gradient).flatten(1).all(1),
                ]
            )
        )
        if (step + 1) % self.every == 0:
            self.flush(history)

    def flush(self, history: list[torch.Tensor]) -> None:
        """Check every step recorded since the last check."""
        pending = self.flags[self.checked :]
        if not pending:
            return
        stacked = torch.stack(pending)  # (k, 3, n)
        self.checked = len(self.flags)
        if bool(stacked.all()):
            return
        flat = stacked.flatten(1).all(1).tolist()
        offset = flat.index(False)
        step = self.checked - len(pending) + offset
        flags = stacked[offset].cpu()
        kind = next(k for k in range(3) if not bool(flags[k].all()))
        bad = (~flags[kind]).nonzero().flatten().tolist()
        raise NetlensValueError(self._message(step, self._KINDS[kind], bad, history[step]))

    def _message(self, step: int, kind: str, bad: list[int], values: torch.Tensor) -> str:
        total = len(self.names) * self.copies
        which = list(dict.fromkeys(self.names[index // self.copies] for index in bad))
        where = ", ".join(which[:8]) + (", ..." if len(which) > 8 else "")
        inputs = f"{len(bad)} of the {total} inputs ({where})"
        when = f"at step {step + 1} of {self.steps}"
        if kind == "inputs":
            return (
                f"Expected finite inputs throughout the optimisation, but {when} the inputs of "
                f"{inputs} became NaN or infinite: stopped there. Lower lr, bound the inputs "
                "with value_range=, or add l2=."
            )
        if kind == "objective":
            counted = non_finite(values[bad].cpu()) or "NaN or infinite"
            half = self.dtype.itemsize < 4
            return (
                f"Expected a finite objective throughout the optimisation, but {when} the "
                f"objective of {inputs} was not finite ({counted} values) on finite inputs: "
                f"the model (in {self.dtype}) or the objective produced it. Stopped there; "
                "look for an overflow, a division by zero or a log of zero"
                + (", or run the model in float32." if half else ".")
            )
        return (
            f"Expected a finite gradient throughout the optimisation, but {when} the gradient "
            f"of the objective for {inputs} was NaN or infinite while the objective was "
            f"finite: the model's backward pass (in {self.dtype}) produced it. Stopped there."
        )


def total_variation(images: torch.Tensor, spatial: int) -> torch.Tensor:
    """Mean absolute difference of neighbours along each spatial dim, per input."""
    total = images.new_zeros(images.shape[0])
    for dim in range(images.dim() - spatial, images.dim()):
        if images.shape[dim] > 1:
            total = total + images.diff(dim=dim).abs().flatten(1).mean(1)
    return total


def optimise(
    parametrization: Parametrization,
    image: Callable[[], torch.Tensor],
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    values_of: Callable[[torch.Tensor], torch.Tensor],
    options: Options,
    watch: FiniteWatch,
    *,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Maximise the values of the inputs ``image()`` over the parametrisation, with Adam.

    Args:
        parametrization: Its ``raw`` is the tensor optimised (and blurred every
            ``options.blur_every`` steps).
        image: The inputs before transforms, as a function of the parametrisation.
        transform: Applied to the inputs at every step (None: none).
        values_of: One objective value per input.
        options: The checked options (steps, lr, l2, tv, blur, progress).
        watch: Checks that inputs, values and gradients stay finite.
        dtype: The model's dtype: inputs are cast to it on the way in.
        device: The model's device.
        name: What the progress bar says is maximised.

    Returns:
        The values at every step (on the transformed inputs of the step), the final inputs in
        ``dtype``, and their values without transforms.
    """
    steps, spatial = options.steps, spatial_dims(len(options.shape))
    raw = parametrization.raw
    # On the CPU, convolutions and above all max-pooling of image batches ran faster in the
    # channels-last layout (LeNet5 up to conv2: 1.75x; benchmarks/lucent_compare.py); the
    # values are the same up to rounding.
    channels_last = _CHANNELS_LAST and device.type == "cpu" and len(options.shape) == 3
    optimizer = Adam(raw, options.lr)
    history: list[torch.Tensor] = []
    for step in progress_bar(range(steps), enabled=options.progress, desc=f"maximize {name}"):
        current = image()
        inputs = current if transform is None else transform(current)
        inputs = inputs.to(dtype)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        values = values_of(inputs)
        if step == 0 and not depends_on(values, raw):
            raise NetlensValueError(
                "Expected the objective to depend on the input through the model, but its "
                "values carry no gradient (does the objective function detach them?)."
            )
        loss = -values.sum()
        if options.l2:
            loss = loss + options.l2 * current.pow(2).flatten(1).mean(1).sum()
        if options.tv:
            loss = loss + options.tv * total_variation(current, spatial).sum()
        (found,) = torch.autograd.grad(loss, [raw], allow_unused=True)
        gradient = torch.zeros_like(raw) if found is None else found
        history.append(values.detach())
        # before the step: a NaN gradient would make every later input NaN
        watch.check(step, current.detach(), history, gradient)
        optimizer.step(gradient)
        blur_every = options.blur_every
        if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
            parametrization.blur_(options.blur_sigma, spatial)
    watch.flush(history)
    with torch.no_grad():
        final = image().detach().to(dtype)
        reached = values_of(final).detach()
    if not (bool(torch.isfinite(final).all()) and bool(torch.isfinite(reached).all())):
        raise NetlensValueError(
            f"Expected finite inputs and activations after {steps} steps, but the "
            f"optimisation of a {dtype} model produced NaN or infinite values: lower lr, "
            "bound the inputs with value_range=, or run the model in float32."
        )
    return history, final, reached
