"""The Hydra configs of the demo app ``multiloss-train`` (``pkg://lightning_multiloss.app.conf``).

``train.yaml`` and the demo's groups (``data``, ``model``, ``experiment``, ``trainer``, ``hydra``);
``train.yaml`` adds the plugin's groups (``pkg://lightning_multiloss.conf``) to its search path.
"""
