"""The Map page's scatter: a plotly WebGL figure in a small Streamlit component that sends back
only the lasso's or box's outline, never the selected points.

``st.plotly_chart(on_select=...)`` returns every selected point to the server: about 350 bytes a
point, so a lasso over 140k of 708k problems is a 49 MB message, which Streamlit refuses (its
client message limit, ``server.maxWidgetStateSize``, is 25 MB) by closing the connection. Here
the browser sends the outline (a few kB whatever the selection) and the server finds the points
inside it (core.problem_map.points_inside), in well under a second at 708k.

No build step and no network: the component is one HTML file written next to a copy of the
plotly.js that the plotly package ships, in the cache folder, and it speaks Streamlit's
component protocol (componentReady, render, setComponentValue, setFrameHeight) by postMessage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import plotly
import streamlit.components.v1 as components

from core.tokens import tokenizer_cache_dir

_HTML = """<!doctype html>
<html><head><meta charset="utf-8">
<script src="plotly.min.js"></script>
<style>html, body { margin: 0; padding: 0; font-family: sans-serif; } #plot { width: 100%; }</style>
</head><body><div id="plot"></div>
<script>
function send(type, data) {
  window.parent.postMessage(Object.assign({isStreamlitMessage: true, type: type}, data || {}), "*");
}
let shown = null, selections = 0;
window.addEventListener("message", function (event) {
  if (!event.data || event.data.type !== "streamlit:render") return;
  const args = event.data.args;
  if (args.figure === shown) return;  // a rerun with the same figure: keep the zoom and the view
  shown = args.figure;
  const fig = JSON.parse(args.figure);
  Plotly.react("plot", fig.data, fig.layout, {displaylogo: false, responsive: true}).then(function (gd) {
    if (!gd.dataset.bound) {
      gd.dataset.bound = "1";
      gd.on("plotly_selected", function (e) {
        if (!e) return;
        selections += 1;
        let value = null;
        if (e.lassoPoints) value = {kind: "lasso", x: e.lassoPoints.x, y: e.lassoPoints.y, n: selections};
        else if (e.range) value = {kind: "box", x: e.range.x, y: e.range.y, n: selections};
        if (value) send("streamlit:setComponentValue", {value: value, dataType: "json"});
      });
    }
    gd.dataset.drawn = String(Date.now());
    send("streamlit:setFrameHeight", {height: document.body.scrollHeight});
  });
});
send("streamlit:componentReady", {apiVersion: 1});
</script></body></html>
"""


def _component_folder() -> Path:
    """The component's folder: index.html and the plotly.js of the installed plotly package."""
    folder = tokenizer_cache_dir() / f"map-chart-plotly-{plotly.__version__}"
    folder.mkdir(parents=True, exist_ok=True)
    bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = folder / "plotly.min.js"
    if not target.exists() or target.stat().st_size != bundled.stat().st_size:
        tmp = folder / "plotly.min.js.tmp"
        shutil.copyfile(bundled, tmp)
        tmp.replace(target)
    index = folder / "index.html"
    if not index.exists() or index.read_text() != _HTML:
        tmp = folder / "index.html.tmp"
        tmp.write_text(_HTML)
        tmp.replace(index)
    return folder


_component = components.declare_component("thoughtscope_map", path=str(_component_folder()))


def scatter(figure_json: str, *, key: str, on_change=None):
    """Draw the map figure (plotly JSON); returns the last selection's outline
    ({'kind': 'lasso'|'box', 'x': [...], 'y': [...], 'n': k}) or None."""
    return _component(figure=figure_json, key=key, on_change=on_change, default=None)
