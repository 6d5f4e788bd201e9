"""`fiun-sim export`: a trained topology as files, so a person can publish it to peers by hand."""

from __future__ import annotations

import json
from pathlib import Path

from fiun_peer.tensors import to_bytes

from .centralized import SimConfig, prepare
from .network import architecture
from .training import own_data


def export_stage(cfg: SimConfig, out: str | Path) -> list[str]:
    """Write OUT/arch.json and OUT/<model>/{weights,data}.safetensors; return the publish commands."""
    out = Path(out)
    stage = prepare(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch.json").write_text(json.dumps(architecture(stage)) + "\n")
    lines = [f"wrote {len(stage.nodes)} models to {out}/ (architecture in {out}/arch.json); publish each from "
             "its owner's peer, parents first:"]
    for spec in stage.nodes:
        d = out / spec.id
        d.mkdir(exist_ok=True)
        x, y = own_data(stage.ds, stage.data_idx[spec.id])
        (d / "weights.safetensors").write_bytes(to_bytes(stage.models[spec.id].state_dict()))
        (d / "data.safetensors").write_bytes(to_bytes({"x": x, "y": y}))
        parents = " ".join(f"{p}:{spec.relation}" for p in spec.parents)
        lines.append(f"  fiun-peer admin --target HOST:PORT publish --model-id {spec.id} "
                     f"--weights {d}/weights.safetensors --data {d}/data.safetensors --arch {out}/arch.json "
                     f"--labels {','.join(map(str, spec.labels))}" + (f" --parents {parents}" if parents else ""))
    return lines
