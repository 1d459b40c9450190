"""`AIASSIST_AGENT_TOOLS` by import path or by file: the file form needs nothing on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aiassist.agent.assembly import load_object
from aiassist.agent.tools import ToolSet

TOOLS = '''
from aiassist.agent.tools import ToolSet, tool

toolset = ToolSet()


@toolset.add
@tool
async def ping() -> str:
    """Answer pong."""
    return "pong"
'''


def test_a_file_outside_sys_path_loads_once(tmp_path: Path) -> None:
    (tmp_path / "shop_tools.py").write_text(TOOLS)
    assert str(tmp_path) not in sys.path
    found = load_object(f"{tmp_path / 'shop_tools.py'}:toolset", setting="AIASSIST_AGENT_TOOLS")
    assert isinstance(found, ToolSet) and [t.name for t in found] == ["ping"]
    again = load_object(f"{tmp_path / 'shop_tools.py'}:toolset", setting="AIASSIST_AGENT_TOOLS")
    assert again is found  # one module per file, as an import would give


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{dir}/missing.py:toolset", "cannot import"),
        ("{dir}/shop_tools.py:nothing", "has no 'nothing'"),
        ("no.such.module:toolset", "cannot import 'no.such.module'"),
        ("toolset", "expected 'package.module:name' or 'path/to/file.py:name'"),
    ],
)
def test_a_wrong_value_names_the_setting(tmp_path: Path, value: str, says: str) -> None:
    (tmp_path / "shop_tools.py").write_text(TOOLS)
    with pytest.raises(ValueError, match="AIASSIST_AGENT_TOOLS") as caught:
        load_object(value.format(dir=tmp_path), setting="AIASSIST_AGENT_TOOLS")
    assert says in str(caught.value)
