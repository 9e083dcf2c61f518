"""Incremental occlusion: recompute only the region each occluder can change.

``trace`` (a private trace of the model's forward), ``graph`` (the traced operations),
``local`` (window operations), ``classify`` (what each node does to a changed region),
``boxes`` (how regions grow), ``plan`` (the cost model and the batches), ``store`` (the kept
unoccluded activations), ``patches`` (gathering and pasting regions), ``passes`` (one
incremental pass) and ``engine`` (building and running it all).
"""
