"""Test helper: a stand-in `omegaconf` package to pickle DictConfig-carrying checkpoints without omegaconf."""

from pathlib import Path


def write_fake_omegaconf(root: Path) -> None:
    """A package `omegaconf` whose classes pickle their state the way OmegaConf 2.x does.

    DictConfig/ListConfig pickle their __dict__ (`_metadata`, `_parent`, `_content`), leaf nodes keep the
    value in `_val`, metadata are dataclasses holding typing.Any, dict and a defaultdict. Only the layout
    matters: the reader must never import this package.
    """
    package = root / "omegaconf"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "base.py").write_text(
        "import collections, dataclasses, typing\n"
        "@dataclasses.dataclass\n"
        "class Metadata:\n"
        "    ref_type: object = typing.Any\n"
        "    object_type: object = None\n"
        "    optional: bool = True\n"
        "    key: object = None\n"
        "    flags: dict = dataclasses.field(default_factory=dict)\n"
        "    resolver_cache: object = dataclasses.field(\n"
        "        default_factory=lambda: collections.defaultdict(dict))\n"
        "@dataclasses.dataclass\n"
        "class ContainerMetadata(Metadata):\n"
        "    key_type: object = typing.Any\n"
        "    element_type: object = typing.Any\n"
        "class Node:\n"
        "    def __getstate__(self):\n"
        "        state = dict(self.__dict__)\n"
        "        state.pop('_flags_cache', None)\n"
        "        return state\n", encoding="utf-8"
    )
    (package / "nodes.py").write_text(
        "from omegaconf.base import Metadata, Node\n"
        "class AnyNode(Node):\n"
        "    def __init__(self, value, key, parent):\n"
        "        self.__dict__.update(_val=value, _metadata=Metadata(key=key), _parent=parent,\n"
        "                             _flags_cache=None)\n", encoding="utf-8"
    )
    (package / "dictconfig.py").write_text(
        "from omegaconf.base import ContainerMetadata, Node\n"
        "from omegaconf.nodes import AnyNode\n"
        "from omegaconf.listconfig import ListConfig\n"
        "def wrap(value, key, parent):\n"
        "    if isinstance(value, dict):\n"
        "        return DictConfig(value, key, parent)\n"
        "    if isinstance(value, list):\n"
        "        return ListConfig(value, key, parent, wrap)\n"
        "    return AnyNode(value, key, parent)\n"
        "class DictConfig(Node):\n"
        "    def __init__(self, content, key=None, parent=None):\n"
        "        self.__dict__.update(_metadata=ContainerMetadata(key=key, object_type=dict),\n"
        "                             _parent=parent, _flags_cache=None)\n"
        "        self.__dict__['_content'] = {k: wrap(v, k, self) for k, v in content.items()}\n",
        encoding="utf-8"
    )
    (package / "listconfig.py").write_text(
        "from omegaconf.base import ContainerMetadata, Node\n"
        "class ListConfig(Node):\n"
        "    def __init__(self, content, key, parent, wrap):\n"
        "        self.__dict__.update(_metadata=ContainerMetadata(key=key, object_type=list),\n"
        "                             _parent=parent, _flags_cache=None)\n"
        "        self.__dict__['_content'] = [wrap(v, i, self) for i, v in enumerate(content)]\n",
        encoding="utf-8"
    )
