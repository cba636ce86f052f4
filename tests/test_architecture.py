"""docs/architecture.md, checked: imports point down the floors, and only the CLI uses the simulator."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "simed_stream"
FLOORS = {  # lowest first; a module may import from its own floor or below
    "foundations": ("simed_stream", "errors", "config", "arrays", "files", "protocol", "kernels", "codec",
                    "records", "metrics", "image_files", "optics", "keys", "links"),
    "detectors": ("detectors",),
    "stages": ("capture", "capture_writer", "capture_replay", "ingest", "localise", "particles", "stack", "report",
               "truth", "phasing", "fanout", "fanout_messages", "chain_settings"),
    "chain": ("chain",),
    "drivers": ("live", "reprocess"),
    "web": ("web",),  # reads what the live pipeline publishes (live/view.py); only the CLI starts it
    "cli": ("cli",),
}
LEVEL = {room: level for level, rooms in enumerate(FLOORS.values()) for room in rooms}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module] = {n for n in names if n.split(".")[0] in ("simed_stream", "simulator")}
    return found


def test_every_module_has_a_floor():
    assert {room(module) for module in imports()} <= set(LEVEL)


def test_imports_point_down_the_floors():
    upward = [(module, name) for module, names in imports().items() for name in names
              if name.startswith("simed_stream") and LEVEL[room(name)] > LEVEL[room(module)]]
    assert not upward, upward


def test_only_the_cli_uses_the_simulator():
    users = {module for module, names in imports().items() if any(n.startswith("simulator") for n in names)}
    assert users and all(room(module) == "cli" for module in users), users
