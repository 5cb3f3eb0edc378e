"""The synthetic world: the only place the hidden ground truth lives.

- :mod:`ranker.sim.truth`: the hidden preference model and its table.
- :mod:`ranker.sim.synth`: builds a demo world (``ranker demo init``).
- :mod:`ranker.sim.simulate`: simulated traffic through serving, clicks from the truth.
"""
