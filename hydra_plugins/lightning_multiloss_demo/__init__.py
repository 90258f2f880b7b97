"""Lists the plugin's config groups in ``multiloss-train --help``, and only there.

The demo's ``train.yaml`` adds ``pkg://lightning_multiloss.conf`` to its search path, which is all
that composing needs; but Hydra lists in ``--help`` only the groups of the search path it starts
with, before it reads ``train.yaml``. This search-path plugin (Hydra finds it in the
``hydra_plugins`` namespace) adds the plugin's configs at that start, for the demo's own config
folder only: other Hydra apps see no change. It imports nothing of lightning-multiloss.
"""

from __future__ import annotations

import importlib.util
import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PLUGIN_CONFIGS = "pkg://lightning_multiloss.conf"
DEMO_CONFIGS = "pkg://lightning_multiloss.app.conf"


def demo_config_dir() -> str | None:
    """The folder of the demo's configs (``lightning_multiloss/app/conf``), found without importing the package."""
    spec = importlib.util.find_spec("lightning_multiloss")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.normpath(os.path.join(next(iter(spec.submodule_search_locations)), "app", "conf"))


class LightningMultilossDemoSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        demo = demo_config_dir()
        for element in search_path.get_path():
            path = element.path.removeprefix("file://")
            if element.provider == "main" and (path == DEMO_CONFIGS or (demo and os.path.normpath(path) == demo)):
                search_path.append("lightning-multiloss", PLUGIN_CONFIGS)
                return
