"""The demo Hydra app: ``multiloss-train`` and ``multiloss-report``.

It trains a configurable multi-task network (:mod:`~lightning_multiloss.app.models`) on the data
modules of :mod:`~lightning_multiloss.app.data`, composed from the Hydra configs of ``conf/``
(schemas and checks in :mod:`~lightning_multiloss.app.config`), writes each run's
``result.json`` (:mod:`~lightning_multiloss.results`) and compares the runs of a sweep
(:mod:`~lightning_multiloss.app.report`).

The app uses only the public names of the plugin core (``lightning_multiloss`` outside this
sub-package); the core imports nothing from here. ``tests/test_layout.py`` checks both rules.
"""
