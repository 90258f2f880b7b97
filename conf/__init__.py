"""The plugin's Hydra configs (installed as ``lightning_multiloss.conf``).

Add them to your own Hydra app with ``hydra: searchpath: [pkg://lightning_multiloss.conf]``: the
groups ``weighting``, ``schedule``, ``loss``, ``task``, ``callbacks`` and ``logger``, nothing else.
The demo app's configs are in ``lightning_multiloss.app.conf``.
"""
