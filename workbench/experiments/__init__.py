"""Iterating over runs: compare them (:mod:`.compare`: ``wb.runs``, ``wb.compare``) and sweep their params
(:mod:`.sweep`: ``wb.sweep``). A package of its own so that these modules never shadow the ``workbench.experiments.compare`` /
``workbench.sweep`` functions."""
