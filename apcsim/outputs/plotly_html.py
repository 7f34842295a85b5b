"""A figure's HTML as `plotly.io.to_html(fig, full_html=False)` writes it, without importing plotly
once its page shell is cached.

Importing plotly.io's JSON writer imports plotly's validators and narwhals: a tenth of a second
that a short run's report spends before writing a byte. The page around a figure's data (the
div, the script calling Plotly.newPlot, plotly.js inline or its CDN tag with its integrity hash,
and the layout) depends only on the plotly release, the layout and how plotly.js is included;
plotly writes it once, with placeholders for the data and the div's id, and it is cached in
`report/` of apcsim.cachedir. A page is that shell with this figure's data, encoded as plotly
encodes it (orjson when installed, else json, then the same escapes), and a fresh random id as
plotly gives one. Tests hold the result equal to plotly's own to_html.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from importlib.util import find_spec
from pathlib import Path

from apcsim.cachedir import cache_dir, memoized

_DATA = "@@apcsim-figure-data@@"
_DIV_ID = "@@apcsim-figure-div-id@@"
# The placeholders in the shell's UTF-8 bytes: the data as plotly writes it (a JSON string). The
# shell is handled as bytes: with plotly.js inline it is 4.8 MB and not ASCII, which as a str is
# a copy twice that size to decode, search and re-encode for every page.
_DATA_BYTES = json.dumps(_DATA).encode()
_DIV_ID_BYTES = _DIV_ID.encode()
# plotly.io._json's escapes (_swap_json, and _swap_orjson for the orjson engine).
_SWAP_JSON = (("<", "\\u003c"), (">", "\\u003e"), ("/", "\\u002f"))
_SWAP_ORJSON = _SWAP_JSON + (("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _as_list(o):
    """plotly's json engine writes a numpy array (here: only empty ones) as a list."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def plotly_json(obj) -> str:
    """`plotly.io.json.to_json_plotly(obj)` for plain dicts, lists, strings, numbers and numpy arrays."""
    try:
        import orjson
    except ImportError:  # plotly's "auto" engine falls back to json
        text, swap = json.dumps(obj, separators=(",", ":"), default=_as_list), _SWAP_JSON
    else:
        text = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode("utf8")
        swap = _SWAP_ORJSON
    for unsafe, safe in swap:
        text = text.replace(unsafe, safe)
    return text


def _shell(layout: dict, include_plotlyjs: bool | str) -> bytes:
    from apcsim.outputs.report_dict import plotly_stamp

    key = hashlib.sha256(json.dumps([plotly_stamp(), find_spec("orjson") is not None, include_plotlyjs,
                                     layout]).encode())
    key.update(Path(__file__).read_bytes())  # this module's placeholders and escapes
    entry = cache_dir() / "report" / f"shell-{key.hexdigest()}.html"

    def load(data: bytes) -> bytes | None:
        return data if data.count(_DATA_BYTES) == 1 else None  # one data placeholder

    def make() -> bytes:
        import plotly.io as pio

        return pio.to_html({"data": _DATA, "layout": layout}, validate=False, full_html=False,
                           include_plotlyjs=include_plotlyjs, div_id=_DIV_ID).encode("utf-8")

    return memoized(entry, make, load=load, dump=lambda shell: shell)


def figure_html_bytes(fig: dict, include_plotlyjs: bool | str) -> bytes:
    """`plotly.io.to_html(fig, validate=False, full_html=False, include_plotlyjs=...)` of a figure
    dict {"data": [...], "layout": {...}}, encoded as UTF-8, made without decoding the shell."""
    shell = _shell(fig["layout"], include_plotlyjs)
    data = plotly_json(fig["data"]).encode("utf-8")
    return shell.replace(_DATA_BYTES, data, 1).replace(_DIV_ID_BYTES, str(uuid.uuid4()).encode())
