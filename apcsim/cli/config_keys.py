"""Config keys the schema does not have: an error that names the closest valid ones.

Hydra refuses `block_sise=32` on a typed config ("Could not override ... To append to your config
use +block_sise=32"), and with the `+` it advises, it adds the key, which OmegaConf then drops
without a word when it builds the dataclass: the run goes on with the default. So a composed
config is checked here (`check_known_keys`), and Hydra's own refusal is reworded
(`reword_hydra_error`) with the same message, so both spellings get the same answer.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from omegaconf import DictConfig, OmegaConf

from apcsim.errors import ConfigError

# SimConfig's config groups and how a user selects one (`policy` and `experiment` have no default).
GROUP_SELECTORS = {"policy": "+policy", "experiment": "+experiment", "scheduler": "scheduler",
                   "workload": "workload", "hardware": "hardware", "model": "model", "router": "router"}


def _field_names(t) -> list[str]:
    return [f.name for f in dataclasses.fields(t)] if dataclasses.is_dataclass(t) else []


def _first_leaf(value, key: str) -> tuple[str, object]:
    """`+schedular.max_num_seqs=4` composes to {schedular: {max_num_seqs: 4}}: back to the override."""
    while isinstance(value, dict) and len(value) == 1:
        (k, value), = value.items()
        key = f"{key}.{k}"
    return key, value


def _options_with_key(group: str, key: str) -> list[str]:
    """The options of a config group whose schema has `key` (e.g. workload.path: azure, mooncake)."""
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo.get(group)
    if not isinstance(repo, dict):
        return []
    out = []
    for fname, node in repo.items():
        cfg = getattr(node, "node", None)
        if isinstance(cfg, DictConfig) and key in _field_names(OmegaConf.get_type(cfg)):
            out.append(fname.removesuffix(".yaml"))
    return sorted(out)


def unknown_key_message(full_key: str, owner: type, value: object = None, *, leaf_override: str | None = None) -> str:
    """One line for a key `owner` (a dataclass) does not have: the closest valid names, or all of
    them when none is close; a group name gets its selector (`+policy=lru`)."""
    parent, _, leaf = full_key.rpartition(".")
    names = _field_names(owner)
    prefix = f"{parent}." if parent else ""
    msg = f"unknown config key '{full_key}'"
    if leaf_override and leaf_override != full_key:
        msg += f" (in {leaf_override})"
    close = difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)
    if close:
        msg += "; did you mean " + " or ".join(prefix + c for c in close)
        best = close[0]
        if not parent and best in GROUP_SELECTORS and isinstance(value, str) and leaf_override in (None, full_key):
            msg += f" (a config group: {GROUP_SELECTORS[best]}={value})"
        elif value is not None and not isinstance(value, dict):
            rest = leaf_override[len(full_key):] if leaf_override else ""
            msg += f" ({prefix}{best}{rest}={value})"
        msg += "?"
    else:
        where = f"under {parent}" if parent else "at the top level"
        msg += f"; the keys {where} are: {', '.join(names)}"
    elsewhere = _options_with_key(parent, leaf) if parent in GROUP_SELECTORS else []
    if elsewhere:
        msg += f"; {leaf} is a key of {parent}={'/'.join(elsewhere)}"
    return msg


def unknown_keys(dcfg: DictConfig, prefix: str = "") -> list[tuple[str, type, object]]:
    """(dotted key, the dataclass it is not in, its value) for every key of a composed config
    that its node's schema does not declare. Nodes without a dataclass schema (`experiment`,
    typed Any) are free-form and not checked."""
    owner = OmegaConf.get_type(dcfg)
    known = _field_names(owner)
    out = []
    for key in dcfg.keys():
        full = f"{prefix}{key}"
        node = dcfg._get_node(key)
        if known and key not in known:
            raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node._value()
            out.append((full, owner, raw))
        elif isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            out += unknown_keys(node, prefix=f"{full}.")
    return out


def check_known_keys(dcfg: DictConfig) -> None:
    """ConfigError for the first key the schema does not have (see the module doc)."""
    bad = unknown_keys(dcfg)
    if bad:
        full, owner, value = bad[0]
        leaf_key, leaf_value = _first_leaf(value, full)
        raise ConfigError(unknown_key_message(full, owner, leaf_value if isinstance(value, dict) else value,
                                              leaf_override=leaf_key if isinstance(value, dict) else None))


def _schema_by_name(name: str) -> type | None:
    """The dataclass named `name` among the configs Hydra knows (apcsim's and Hydra's own)."""
    from hydra.core.config_store import ConfigStore

    stack = [ConfigStore.instance().repo]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += item.values()
            continue
        # A ConfigStore entry holds its config in `.node`; a DictConfig would treat `.node` as a
        # key lookup (and raise on a None node), so it is taken as it is.
        node = item if isinstance(item, DictConfig) else getattr(item, "node", None)
        if not isinstance(node, DictConfig) or id(node) in seen or node._is_none() or node._is_missing():
            continue
        seen.add(id(node))
        t = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(t) and t.__name__ == name:
            return t
        stack += [node._get_node(k) for k in node.keys()]
    return None


_NOT_IN = re.compile(r"Could not override '([^']+)'\..*?Key '([^']+)' not in '(\w+)'", re.S)
_TWICE = re.compile(r"Multiple values for (\S+?)\. To override a value use 'override \S+: ([^']+)'")
_PARSE = re.compile(r"Error parsing override '([^']*)'")


def reword_hydra_error(text: str) -> str | None:
    """One line for the Hydra errors whose own wording misleads (None: leave the text as is)."""
    m = _NOT_IN.search(text)
    if m:
        override_key, missing, owner_name = m.groups()
        owner = _schema_by_name(owner_name)
        parts = override_key.split(".")
        if owner is not None and missing in parts:
            # `orkload.input_tokens`: the unknown key is `orkload`, the rest is under it
            full_key = ".".join(parts[: parts.index(missing) + 1])
            value = re.search(r"use \+\S+?=(.*)", text)
            return unknown_key_message(full_key, owner, value.group(1).strip() if value else None,
                                       leaf_override=override_key)
    m = _TWICE.search(text)
    if m:
        group, last = m.groups()
        sel = GROUP_SELECTORS.get(group, group)
        return (f"{group} is selected more than once on the command line (the last: {last}); give {sel}=... once, "
                f"or sweep several with -m {sel}=a,b")
    m = _PARSE.search(text)
    if m:
        head = "; ".join(line.strip() for line in text.splitlines()[:2] if line.strip() and "hydra.cc" not in line)
        override = m.group(1)
        if "=" not in override or " " in override:
            return (f"{head}; an override is KEY=VALUE in one shell word: a value with spaces or special characters "
                    f"needs quotes for the shell and for Hydra, e.g. 'workload.path=\"my trace.jsonl\"'")
    m = re.search(r"unrecognized arguments: (.*)", text)
    if m:
        return (f"unrecognized arguments: {m.group(1).strip()}; Hydra's options (-m/--multirun, --cfg, ...) go "
                "before the overrides: python -m apcsim -m key=a,b")
    return None
