"""Occlusion sensitivity (Zeiler & Fergus 2014, Figure 7).

``api`` (:func:`netlens.occlusion`: check, job, run, result), ``job`` (the checked request),
``geometry`` (the occluder grid), ``choose`` (plain, incremental or measured), ``plain`` (every
occluded copy through the model), ``tally`` (the per-position results), ``result``
(:class:`netlens.OcclusionMap`) and ``incremental`` (recomputing only what an occluder changes).
"""
