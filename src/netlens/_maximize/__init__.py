"""Activation maximisation: synthesise the inputs a channel or an objective responds to most.

``api`` (:func:`netlens.maximize_activation`), ``options`` (the checked options), ``objectives``
(the terms of :mod:`netlens.objectives`), ``readout`` (running the model as far as the
objective reads), ``param`` (parametrisations and the input pipeline), ``transforms`` (jitter,
scale, rotate, blur), ``optimise`` (the loop) and ``result`` (:class:`netlens.Maximization`).
"""
