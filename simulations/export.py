"""`fiun-sim export`: a trained topology as files, so a person can publish it to peers by hand."""

from __future__ import annotations

import json
from pathlib import Path

from fiun_peer.tensors import to_bytes

from . import byom
from .centralized import SimConfig, Stage, prepare
from .network import architecture
from .training import own_data

#: The placeholder in the printed commands: the home of the model owner's peer (see `fiun-peer --help`).
HOME_PLACEHOLDER = "HOME"


def export_stage(cfg: SimConfig, out: str | Path) -> list[str]:
    """Write OUT/arch.json and OUT/<model>/{weights,data}.safetensors; return the publish commands."""
    return write_stage(prepare(cfg), out)


def write_stage(stage: Stage, out: str | Path) -> list[str]:
    """:func:`export_stage` for a stage already trained."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if byom.is_byom(stage.train_cfg.model):
        return _write_byom(stage, out)
    (out / "arch.json").write_text(json.dumps(architecture(stage)) + "\n")
    lines = [f"wrote {len(stage.nodes)} models to {out}/ (architecture in {out}/arch.json); publish each from "
             f"its owner's peer, parents first ({HOME_PLACEHOLDER}: that peer's home, e.g. alice; --home "
             "supplies its address and admin token):"]
    for spec in stage.nodes:
        d = out / spec.id
        d.mkdir(exist_ok=True)
        x, y = own_data(stage.ds, stage.data_idx[spec.id])
        (d / "weights.safetensors").write_bytes(to_bytes(stage.models[spec.id].state_dict()))
        (d / "data.safetensors").write_bytes(to_bytes({"x": x, "y": y}))
        lines.append("  " + publish_command(spec.id, d, out, spec.labels,
                                            [(p, spec.relation) for p in spec.parents]))
    return lines


def _write_byom(stage: Stage, out: Path) -> list[str]:
    """Each model as its owner would keep it: a .pt2 program, torchvision weights and arch.json, or an hf
    folder (config.json, model.safetensors), and its own data."""
    name = stage.train_cfg.model
    fmt = byom.format_of(name)
    lines = [f"wrote {len(stage.nodes)} {name} models ({fmt} format) to {out}/; publish each from its owner's "
             f"peer, parents first ({HOME_PLACEHOLDER}: that peer's home, e.g. alice):"]
    for spec in stage.nodes:
        d = out / spec.id
        d.mkdir(exist_ok=True)
        fields = stage.publication(spec.id)[1]
        (d / "data.safetensors").write_bytes(fields["data"])
        arch = None
        if fmt == "torch-export":
            model = d / "model.pt2"
            model.write_bytes(fields["weights"])
        elif fmt == "hf":
            model = d / "hf"
            model.mkdir(exist_ok=True)
            (model / "config.json").write_text(fields["architecture_json"] + "\n")
            (model / "model.safetensors").write_bytes(fields["weights"])
        else:
            model = d / "weights.safetensors"
            model.write_bytes(fields["weights"])
            arch = d / "arch.json"
            arch.write_text(fields["architecture_json"] + "\n")
        line = (f"fiun-peer admin --home {HOME_PLACEHOLDER} publish --model-id {spec.id} --format {fmt} "
                f"--model {model}" + (f" --arch {arch}" if arch else "") +
                f" --data {d}/data.safetensors --labels {','.join(map(str, spec.labels))}")
        if spec.parents:
            line += " --parents " + " ".join(f"{p}:{spec.relation}" for p in spec.parents)
        lines.append("  " + line)
    return lines


def publish_command(model_id: str, folder: Path, out: Path, labels: list[int] | tuple[int, ...],
                    parents: list[tuple[str, str]], home: str = HOME_PLACEHOLDER) -> str:
    """The `fiun-peer admin publish` line for one exported model (``home``: the owner's peer home).
    It must carry a credential: without one the admin API answers UNAUTHENTICATED."""
    line = (f"fiun-peer admin --home {home} publish --model-id {model_id} --weights {folder}/weights.safetensors "
            f"--data {folder}/data.safetensors --arch {out}/arch.json --labels {','.join(map(str, labels))}")
    if parents:
        line += " --parents " + " ".join(f"{p}:{rel}" for p, rel in parents)
    return line
