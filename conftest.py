"""Root pytest configuration: doctest collection of the package."""

import importlib.util

# The `lightning` package is optional: its callback module is only collected where it is installed.
collect_ignore = [] if importlib.util.find_spec("lightning") else ["lightning_multiloss/lightning.py"]
