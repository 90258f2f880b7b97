"""The demo Hydra app: ``multiloss-train`` and ``multiloss-report``.

It trains a configurable multi-task network (:mod:`~lightning_multiloss.app.models`) on the data
modules of :mod:`~lightning_multiloss.app.data`, composed from its own Hydra configs
(``app/conf``: ``train.yaml``, ``data``, ``model``, ``experiment``, ``trainer``) and the plugin's
(``pkg://lightning_multiloss.conf``; schemas and checks in :mod:`~lightning_multiloss.app.config`),
on either Lightning package (:mod:`~lightning_multiloss.app.namespace`), writes each run's
``result.json`` (:mod:`~lightning_multiloss.results`) and compares the runs of a sweep
(:mod:`~lightning_multiloss.app.report`).

The app uses only the public names of the plugin core (``lightning_multiloss`` outside this
sub-package); the core imports nothing from here. ``tests/test_layout.py`` checks both rules.
"""
