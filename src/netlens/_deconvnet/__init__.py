"""Deconvnet projections and the strongest activations over a data set (Zeiler & Fergus 2014).

``project`` (:func:`netlens.deconvnet`), ``rules`` (the backward rule at rectifiers),
``receptive`` and ``probe`` (receptive fields from the layers' geometry or a gradient probe),
``ranking`` (the running top-k and merging ranks) and ``top`` (:func:`netlens.top_activations`).
"""
