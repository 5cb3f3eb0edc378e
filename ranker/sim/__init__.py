"""The synthetic world: the only place the hidden ground truth lives.

- :mod:`ranker.sim.truth`: the hidden preference model and its table. Only ``ranker.sim``,
  the schema migrations and the tests may import it (it raises ImportError for anyone else).
- :mod:`ranker.sim.oracle`: what the truth says about a list (the oracle's order, expected
  clicks), for ``ranker report``, without handing out the truth.
- :mod:`ranker.sim.synth`: builds a demo world (``ranker demo init``).
- :mod:`ranker.sim.simulate`: simulated traffic through serving, clicks from the truth.
"""
