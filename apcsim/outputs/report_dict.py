"""report.html's main figure as the dict plotly makes of it, without plotly's graph objects.

Building the figure with plotly.graph_objects checks every property through hundreds of lazily
imported validator classes: a quarter of a second of CPU for a page whose data is a few arrays,
the largest part of a short run's output writing. The page is the same bytes either way (but for
the random id plotly gives the plot's div); tests hold this dict equal to the `to_dict()` of the
same figure built with plotly's graph objects (tests/outputs/test_report_dict.py), key order
included, over runs with and without priority classes and timelines:

- the layout (grid, titles, the plotly_white template) depends only on the plotly release, on
  report.py's code and on whether the legend shows; plotly makes it (`report.layout_figure`) the
  first time and it is cached as JSON, key order kept, in `report/` of apcsim.cachedir;
- each trace is plotly's dict of it: its properties in plotly's (alphabetical) order, then type
  and axes, numpy arrays in plotly.js's typed-array form as plotly encodes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from apcsim.cachedir import cache_dir, memoized
from apcsim.outputs.metrics import Timeline
from apcsim.outputs.requestlog import RequestLog

_MAX_POINTS = 4000  # per trace; more adds bytes, not information


def thin(*arrays: np.ndarray):
    n = len(arrays[0])
    if n <= _MAX_POINTS:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, _MAX_POINTS).astype(np.int64))
    return tuple(a[idx] for a in arrays)


def cdf(values) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(np.asarray(values, dtype=np.float64))
    return thin(v, np.arange(1, len(v) + 1) / max(len(v), 1))


# The main figure's grid: (title, x axis title, y axis title) per subplot, row by row.
PANELS = (("TTFT CDF", "TTFT (s)", "fraction of requests"),
          ("End-to-end latency CDF", "latency (s)", "fraction of requests"),
          ("Prefix-cache hit rate (cumulative)", "time (s)", "hits / queries"),
          ("KV-cache usage", "time (s)", "blocks in use / all"),
          ("Running batch size", "time (s)", "requests per step"),
          ("Preemptions (cumulative)", "time (s)", "preemptions"))
# Timeline series: (key of Timeline.as_arrays(), row, col).
SERIES = (("hit_rate", 2, 1), ("kv_usage", 2, 2), ("batch", 3, 1), ("preemptions", 3, 2))

# plotly's typed-array codes (_plotly_utils.utils.plotlyjsShortTypes).
_SHORT_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
                "float32": "f4", "float64": "f8"}


def typed_array(v: np.ndarray):
    """A numpy array as plotly encodes it (_plotly_utils.utils.to_typed_array_spec): int64 narrowed
    to the smallest signed type that holds it, then base64 of its bytes; an empty array or one
    too wide for int32 stays an array."""
    v = np.ascontiguousarray(v)
    if v.size == 0:
        return v
    if v.dtype == np.int64:
        lo, hi = v.min(), v.max()
        for t in (np.int8, np.int16, np.int32):
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
                v = v.astype(t)
                break
        else:
            return v
    code = _SHORT_TYPES.get(str(v.dtype))
    return v if code is None else {"dtype": code, "bdata": base64.b64encode(v).decode("ascii")}


def scatter(x, y, name: str, row: int, col: int, *, line_shape: str | None = None,
            legendgroup: str | None = None, showlegend: bool | None = None) -> dict:
    """A lines trace in subplot (row, col) of the 2-column grid."""
    k = (row - 1) * 2 + col
    props = {"legendgroup": legendgroup, "line": None if line_shape is None else {"shape": line_shape},
             "mode": "lines", "name": name, "showlegend": showlegend, "x": typed_array(x), "y": typed_array(y)}
    trace = {key: v for key, v in props.items() if v is not None}
    trace.update(type="scatter", xaxis="x" if k == 1 else f"x{k}", yaxis="y" if k == 1 else f"y{k}")
    return trace


def plotly_stamp() -> str:
    """The installed plotly (its package's path and modification time: an upgrade changes them)."""
    spec = find_spec("plotly")
    st = os.stat(spec.origin)
    return f"{spec.origin} {st.st_mtime_ns} {st.st_size}"


def layout(showlegend: bool) -> dict:
    """`report.layout_figure(showlegend).to_dict()["layout"]`, from the cache when it has it."""
    h = hashlib.sha256(f"{plotly_stamp()} {showlegend}".encode())
    for code in ("report.py", "report_dict.py"):  # the layout's code: PANELS here, layout_figure there
        h.update(Path(__file__).with_name(code).read_bytes())
    key = h.hexdigest()
    entry = cache_dir() / "report" / f"layout-{key}.json"

    def make() -> dict:
        from apcsim.outputs.report import layout_figure

        return layout_figure(showlegend).to_dict()["layout"]

    return memoized(entry, make, load=json.loads, dump=lambda made: json.dumps(made).encode())


def figure_dict(log: RequestLog, timeline: Timeline) -> dict:
    """What plotly's `to_dict()` of the figure gives, trace for trace: the TTFT and E2E CDFs, each
    priority class's after them (the whole run's then one legend entry, "all requests"), the
    timeline's series."""
    c = log.columns()
    classes = bool(log.by_class)
    everyone = "all requests" if classes else None
    data = [scatter(*cdf(c["ttft"][c["finished"]]), everyone or "TTFT", 1, 1),
            scatter(*cdf(c["e2e"][c["finished"]]), everyone or "E2E", 1, 2)]
    if classes:
        data[1]["showlegend"] = False  # set after the trace was made: plotly keeps it last
        for k in sorted(range(len(log.class_names)), key=lambda k: (log.class_priority[k], log.class_names[k])):
            ok = c["finished"] & (c["class_index"] == k)
            name = f"{log.class_names[k]} (priority {log.class_priority[k]})"
            for col, key in ((1, "ttft"), (2, "e2e")):
                data.append(scatter(*cdf(c[key][ok]), name, 1, col, legendgroup=name, showlegend=col == 1))
    t = timeline.as_arrays()
    if len(t["time"]):
        for key, row, col in SERIES:
            data.append(scatter(*thin(t["time"], t[key]), key, row, col, line_shape="hv"))
    return {"data": data, "layout": layout(classes)}
