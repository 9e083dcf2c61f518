"""The core: what every technique builds on, and which imports no technique.

``errors`` (the error types), ``checks`` (argument validation), ``layers`` (finding layers by
name, glob or type), ``outputs`` (the layer contract: one rule for reading a layer's output),
``model`` (eval mode and shared model state), ``hooks`` (thread-confined hooks),
``stop`` (running a model only as far as some layers), ``ops`` (facts about torch operations),
``windows`` (convolution and pooling window geometry), ``distributed`` (gathering across ranks)
and ``render`` (every figure).
"""
