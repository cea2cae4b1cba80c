"""Puts this package's configs on Hydra's search path (Hydra's plugin convention: a
SearchPathPlugin in the ``hydra_plugins`` namespace package), so ``method=topk`` and
``preset=<name>`` find ``attnbench_topk/conf/method/...``."""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class AttnbenchTopkSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="attnbench-topk", path="pkg://attnbench_topk.conf")
