"""The recipes shipped inside the package: training recipes (YAML, named by their path here without the
suffix: `global_lora`, `seed003/qlora`) and launch configs (`accelerate/*.yaml`, `deepspeed/*.json`).

Every command that takes a CONFIG takes a file or a recipe name; `pigg recipes` lists them and
`pigg recipes copy NAME [DEST]` writes an editable copy. A recipe's first comment line is its summary.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from pigg.errors import ConfigError

RECIPES = Path(__file__).resolve().parent
LAUNCH_FOLDERS = ("accelerate", "deepspeed")  # launch configs, not pigg recipes


def recipe_name(path: Path) -> str:
    return path.relative_to(RECIPES).with_suffix("").as_posix()


def recipe_paths() -> list[Path]:
    """The training recipes, sorted by name."""
    found = [p for p in RECIPES.rglob("*.yaml") if p.relative_to(RECIPES).parts[0] not in LAUNCH_FOLDERS]
    return sorted(found, key=recipe_name)


def launch_config_paths() -> list[Path]:
    return sorted(p for folder in LAUNCH_FOLDERS for p in (RECIPES / folder).glob("*.*"))


def find(name: str) -> Path | None:
    """The shipped file a name means: `global_lora`, `global_lora.yaml`, `seed003/lora`,
    `accelerate/fsdp`, `deepspeed/zero2.json`; None when nothing shipped has that name."""
    wanted = name.strip().removeprefix("./")
    for path in (*recipe_paths(), *launch_config_paths()):
        relative = path.relative_to(RECIPES).as_posix()
        if wanted in (relative, recipe_name(path)):
            return path
    return None


def resolve_config(config: str | Path) -> Path:
    """A CONFIG argument as a file: an existing file as given, else the shipped recipe of that name."""
    path = Path(config)
    if path.is_file():
        return path
    shipped = find(str(config))
    if shipped is not None and shipped in recipe_paths():
        return shipped
    names = [recipe_name(p) for p in recipe_paths()]
    near = difflib.get_close_matches(str(config).removesuffix(".yaml"), names, n=1, cutoff=0.6)
    raise ConfigError(
        f"config file {config} does not exist, and no recipe is named {config}"
        + (f" (did you mean {near[0]}?)" if near else "")
        + "; `pigg recipes` lists the shipped ones"
    )


def deepspeed_config(value: str) -> Path:
    """train.deepspeed as a file: a DeepSpeed JSON of yours, or pigg's `zero2` / `zero3`."""
    path = Path(value)
    if path.is_file():
        return path
    for candidate in (value, f"deepspeed/{value}", f"deepspeed/{Path(value).name}"):
        shipped = find(candidate)
        if shipped is not None and shipped.parent.name == "deepspeed":
            return shipped
    shipped = ", ".join(sorted(p.stem for p in (RECIPES / "deepspeed").glob("*.json")))
    raise ConfigError(f"train.deepspeed: {value} does not exist (pigg ships {shipped}, or give a JSON file)")


def copy(name: str, dest: Path) -> list[Path]:
    """Write an editable copy of a shipped recipe or launch config (into `dest` when it is a folder or a
    name without a suffix, which is then made);
    an accelerate config that names one of pigg's DeepSpeed files gets that file beside it, and its
    reference now points there. Refuses to overwrite. Returns the files written."""
    source = find(name)
    if source is None:
        names = [recipe_name(p) for p in (*recipe_paths(), *launch_config_paths())]
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        raise ConfigError(
            f"no recipe is named {name}" + (f" (did you mean {near[0]}?)" if near else "")
            + "; `pigg recipes` lists them"
        )  # fmt: skip
    target = dest / source.name if dest.is_dir() or not dest.suffix else dest
    text = source.read_text()
    writes = {target: text}
    reference = re.search(r"^(\s*deepspeed_config_file:\s*)(\S+)\s*$", text, re.MULTILINE)
    if reference:
        deepspeed = deepspeed_config(reference.group(2))
        beside = target.parent / deepspeed.name
        writes[target] = text.replace(reference.group(0), f"{reference.group(1)}{beside}")
        writes[beside] = deepspeed.read_text()
    existing = [str(p) for p in writes if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)} already exists; pigg recipes copy never overwrites")
    target.parent.mkdir(parents=True, exist_ok=True)
    for path, content in writes.items():
        path.write_text(content)
    return list(writes)
