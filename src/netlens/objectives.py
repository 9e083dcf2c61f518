"""Objectives of activation maximisation that combine: ``channel("conv2", 3) + 0.5 * ...``.

Each function returns an :class:`Objective`; objectives add, subtract and scale by numbers, and
the result is one objective, possibly over several layers, that
:func:`netlens.maximize_activation` maximises with ``objective=`` (a list of objectives is
optimised as one batch, one input per objective)::

    import netlens as nl
    from netlens import objectives as obj

    nl.maximize_activation(model, objective=obj.channel("conv2", 3), input_shape=(3, 32, 32))
    nl.maximize_activation(
        model,
        objective=obj.channel("conv2", 3) + 10 * obj.diversity("conv2"),
        input_shape=(3, 32, 32),
        batch=4,  # four inputs, pushed apart by the diversity term
    )

An objective gives one value per synthesised input, and the values are maximised (lucent's
objectives are losses, minimised: its ``channel(...) - 1e2 * diversity(...)`` is netlens'
``channel(...) + 1e2 * diversity(...)``). Layers are read by the layer contract, as in every
netlens function: a layer's output is arranged ``(n, C, *map)`` with its channels (units) on
the channel axis of its kind, and ``select=`` / ``channel_dim=`` say otherwise where needed.
The model runs once per step, only as far as the deepest layer the objective reads (through
to the output for :func:`class_logit`).
"""

from ._maximize.objectives import (
    Objective,
    channel,
    class_logit,
    direction,
    diversity,
    neuron,
)

__all__ = [
    "Objective",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "neuron",
]

# The public home, in reprs, pickles and the API pages: the code lives with maximisation.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
