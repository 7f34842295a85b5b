"""Which calibration profile a run uses, and whether it fits the run.

A profile is for one (hardware, model, tp). The bundled ones live at
`apcsim/profiles/<hardware>/<model>.csv` (tp 1) or `<model>_tp<N>.csv`; `profile=PATH` names any
CSV, e.g. one a user measured with `python -m engine.profile`. Either way the CSV's `hardware`
and `model` columns and its tp (that of its weight GEMMs) must be the run's, and so must the
`hardware`, `model` and `tp` of the `<same name>.meta.json` beside it, if there is one (the
profiler writes it). A mismatch is a one-line ConfigError saying which field differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from apcsim.calibration.profile import Profile, available_profiles, profile_path, profile_stem, read_profile
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig


def meta_path(profile: Path) -> Path:
    return profile.with_suffix(".meta.json")


def _describe_available() -> str:
    return ", ".join(f"hardware={p.split('/')[0]} model={p.split('/')[1]}" for p in available_profiles()) or "none"


def find_profile(hw: HardwareConfig, model: ModelConfig, tp: int = 1, path: str | None = None) -> Path:
    """The profile the run names (`path`), else the bundled one of (hardware, model, tp)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"profile not found: {path}")
        return p
    p = profile_path(hw.name, model.name, tp)
    if p is None:
        at = "" if tp == 1 else f" tp={tp} ({hw.name}/{profile_stem(model.name, tp)}.csv)"
        raise ConfigError(
            f"no calibration profile for hardware={hw.name} model={model.name}{at} (available: {_describe_available()}); "
            f"use cost_model=roofline for the spec-sheet model, or profile=PATH for one you measured")
    return p


def check_meta(p: Path, hw: HardwareConfig, model: ModelConfig, tp: int) -> dict | None:
    """The profile's .meta.json, if any, after checking it names this run's hardware, model and tp."""
    m = meta_path(p)
    if not m.is_file():
        return None
    try:
        meta = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"profile metadata {m}: not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"profile metadata {m}: expected a JSON object")
    want = {"hardware": hw.name, "model": model.name, "tp": tp}
    have = {"hardware": meta.get("hardware"), "model": meta.get("model"), "tp": meta.get("tp", 1)}
    for key in want:
        if have[key] is not None and have[key] != want[key]:
            device = f" ({meta['device_name']})" if key == "hardware" and meta.get("device_name") else ""
            raise ConfigError(f"profile {p} was measured for {key}={have[key]}{device}, this run has {key}={want[key]} "
                              f"(from {m.name})")
    return meta


def load_matching_profile(hw: HardwareConfig, model: ModelConfig, tp: int = 1, path: str | None = None) -> Profile:
    """Find, read and check the run's profile (see the module docstring)."""
    p = find_profile(hw, model, tp, path)
    try:
        prof = read_profile(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_identity(p, (prof.hardware, prof.model, prof.tp), hw, model, tp)
    return prof


def check_identity(p: Path, identity: tuple[str, str, int], hw: HardwareConfig, model: ModelConfig, tp: int) -> None:
    """The profile's (hardware, model, tp), as read from its rows, and its .meta.json are the run's."""
    hardware, model_name, profile_tp = identity
    if (hardware, model_name) != (hw.name, model.name):
        raise ConfigError(f"profile {p} is for hardware={hardware} model={model_name}, "
                          f"not hardware={hw.name} model={model.name}")
    if profile_tp != tp:
        raise ConfigError(f"profile {p} was measured at tp={profile_tp}, this run has tp={tp}")
    check_meta(p, hw, model, tp)  # the CSV can be right and its metadata say otherwise (a renamed copy)
