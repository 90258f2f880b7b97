"""The Hydra configs of lightning-multiloss (installed as ``lightning_multiloss.conf``).

Add them to your own Hydra app with ``hydra: searchpath: [pkg://lightning_multiloss.conf]``.
"""
