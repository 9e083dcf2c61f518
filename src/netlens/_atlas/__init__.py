"""The atlas: every lens of netlens over one model, as a browsable site.

``api`` (:func:`netlens.atlas`: the stages), ``collect`` (the one pass over the data),
``histogram`` (data-independent fine bins), ``pictures`` (feature visualisations, weights),
``cards`` (:class:`netlens.Atlas` and its layers and channel cards), ``images`` (tensors to
PNG), ``site`` (pages from ``templates/``) and ``store`` (resuming an interrupted build).
"""
