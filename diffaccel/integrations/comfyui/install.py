"""``python -m diffaccel comfyui install COMFYUI_DIR``: the custom_nodes entry
that loads diffaccel's node pack into a ComfyUI (a folder
``custom_nodes/diffaccel`` with an ``__init__.py`` importing this installed
package), and ``--uninstall`` to remove it. With ``--patch`` the entry also
switches every KSampler to the fused samplers when ComfyUI starts."""

from __future__ import annotations

import os
import shutil

ENTRY = "diffaccel"
_MARK = "# Written by `python -m diffaccel comfyui install`; removed by its --uninstall."


def entry_dir(comfyui_dir: str) -> str:
    return os.path.join(comfyui_dir, "custom_nodes", ENTRY)


def install(comfyui_dir: str, patch: bool = False) -> str:
    custom_nodes = os.path.join(comfyui_dir, "custom_nodes")
    if not os.path.isdir(custom_nodes):
        raise FileNotFoundError(
            f"argument 'COMFYUI_DIR' must be a ComfyUI folder (one with custom_nodes/), got {comfyui_dir!r}"
        )
    target = entry_dir(comfyui_dir)
    init = os.path.join(target, "__init__.py")
    if os.path.exists(target) and not _is_ours(init):
        raise FileExistsError(f"{target} exists and was not written by diffaccel; remove it or choose another ComfyUI")
    os.makedirs(target, exist_ok=True)
    lines = [
        _MARK,
        "from diffaccel.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS",
    ]
    if patch:
        lines += [
            "from diffaccel.integrations.comfyui import patch",
            "",
            "patch()  # every KSampler runs diffaccel's samplers (--patch)",
        ]
    lines += ["", '__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]', ""]
    with open(init, "w") as f:
        f.write("\n".join(lines))
    return target


def uninstall(comfyui_dir: str) -> bool:
    """Removes the entry install() wrote; False where there was none."""
    target = entry_dir(comfyui_dir)
    if not os.path.exists(target):
        return False
    if not _is_ours(os.path.join(target, "__init__.py")):
        raise FileExistsError(f"{target} was not written by diffaccel; not removing it")
    shutil.rmtree(target)
    return True


def _is_ours(init: str) -> bool:
    try:
        with open(init) as f:
            return f.readline().rstrip("\n") == _MARK
    except OSError:
        return False
