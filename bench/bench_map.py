"""Map benchmark: embedding throughput, the projection's time, and the Map page's first paint and
lasso round trip in chromium, each beside a baseline measured in the same run.

    python bench/bench_map.py --store STORE [--embed-sample 2000] [--project-n 708009]
                              [--baseline-project-n 100000] [--browser] [--json] [--workdir DIR]
    python bench/bench_map.py --generate 300 --json      # a generated store of 300 problems (the test's size)

Phases (each in its own child process, so its CPU time and peak RSS are its own):

* ``embed``: ours, ``python -m core map --max-problems N --no-project`` on the store's first N
  problems (reads the questions, encodes, commits every 1,024), against the model called directly
  through sentence-transformers on the same N texts (only ``encode`` timed). Problems/s, the ratio,
  and what the whole store would take at that rate.
* ``project``: at ``--project-n`` problems. Embedding that many on this machine's CPU takes hours
  (see the embed rate), so the vectors are *generated*: each problem takes one of the real
  embeddings measured in ``embed`` plus Gaussian noise (sigma 0.05 per dimension, renormalised),
  stored under the model name ``bench-generated-minilm``. Ours: ``python -m core map --model
  bench-generated-minilm`` (read, PCA, UMAP, k-means, words, publish); baseline: PCA + umap-learn
  called directly on the same matrix at ``--baseline-project-n`` (the first problems). The
  published map (source ``map (bench-generated-minilm)``) is what the page phase draws.
* ``browser`` (``--browser``): the real server (``python -m ui.serve``) and Debian's chromium. First
  paint: navigation to /map until the scatter's WebGL canvas is drawn and the app is idle, cold
  (fresh server) and warm (new session). Lasso round trip: a mouse lasso over about a fifth of the
  map until the sidebar says "Problems from the map: N" and the app is idle. Baseline in the same
  run: a bare Streamlit page that draws the same points (``st.plotly_chart`` of one ``Scattergl``,
  ``on_select="rerun"``, which sends every selected point back; its message limit is raised to
  1 GB so a large lasso completes) and prints the number of selected points; same navigation,
  same lasso.

With ``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, format_table, log, machine_load, python_child, run_child  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
GENERATED_MODEL = "bench-generated-minilm"
OMNITHOUGHT_PROBLEMS = 708_009
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
BARE_PLOT = "[data-testid='stPlotlyChart'] .js-plotly-plot"
OURS_IFRAME = "iframe[src*='thoughtscope_map']"  # ui/map_chart.py draws the map in its own frame
OURS_PLOT = ".js-plotly-plot"
# The bare page gets every selected point back from st.plotly_chart (~350 bytes a point): its
# client message limit is raised so a large lasso is measured instead of closing the connection.
BARE_MAX_WIDGET_STATE_MB = 1000


# --------------------------------------------------------------------------- children


def child_direct_encode(texts_file: str, batch_size: int) -> None:
    """Baseline: sentence-transformers on the texts, nothing else (only encode is timed)."""
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from core.problem_map import packaged_minilm_folder

    texts = pq.read_table(texts_file).column("question").to_pylist()
    model = SentenceTransformer(str(packaged_minilm_folder()), device="cpu")
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"problems": len(texts), "encode_s": seconds, "dim": int(vectors.shape[1])}))


def child_direct_project(vectors_file: str, n: int, pca_dims: int, n_neighbors: int, min_dist: float, seed: int) -> None:
    """Baseline: PCA + umap-learn called directly on the first n rows of the matrix."""
    import numpy as np
    import umap
    from sklearn.decomposition import PCA

    vectors = np.load(vectors_file, mmap_mode="r")[:n]
    vectors = np.ascontiguousarray(vectors)
    started = time.perf_counter()
    reduced = PCA(n_components=pca_dims, random_state=seed).fit_transform(vectors)
    xy = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, low_memory=True,
                   n_jobs=1).fit_transform(reduced)
    print(json.dumps({"problems": len(xy), "project_s": time.perf_counter() - started}))


def child_write_generated(db: str, sample_model: str, n: int, noise: float, seed: int) -> None:
    """Generated embeddings for the first n problems: a real embedding each plus noise."""
    import numpy as np

    from core import problem_map, store

    _, real = problem_map.read_embeddings(sample_model, db=db)
    if len(real) == 0:
        raise SystemExit("no real embeddings to start from: run the embed phase first")
    ids = store.read_df("SELECT problem_id FROM problems p JOIN datasets d USING (dataset_id) WHERE d.status = 'ready' "
                        "ORDER BY problem_id LIMIT ?", [n], db=db)["problem_id"].to_numpy()
    with store.connect(db, read_only=False) as con:
        con.execute("DELETE FROM problem_embeddings WHERE model = ?", [GENERATED_MODEL])
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, len(ids), 65_536):
        part = ids[start:start + 65_536]
        vectors = real[rng.integers(0, len(real), len(part))] + rng.normal(0, noise, (len(part), real.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        problem_map._commit_embeddings(db, GENERATED_MODEL, part, vectors.astype(np.float32))
    print(json.dumps({"problems": int(len(ids)), "write_s": time.perf_counter() - started}))


def child_dump_vectors(db: str, out: str) -> None:
    import numpy as np

    from core import problem_map

    _, vectors = problem_map.read_embeddings(GENERATED_MODEL, db=db)
    np.save(out, vectors)
    print(json.dumps({"problems": int(len(vectors))}))


BARE_APP = '''
import numpy as np, plotly.graph_objects as go, pyarrow.parquet as pq, streamlit as st
st.set_page_config(layout="wide")
@st.cache_resource
def points():
    t = pq.read_table(POINTS)
    return t.column("x").to_numpy(), t.column("y").to_numpy(), t.column("cluster").to_numpy().astype("float32")
x, y, c = points()
fig = go.Figure(go.Scattergl(x=x, y=y, mode="markers", marker=dict(size=3, color=c, colorscale="Viridis")))
fig.update_layout(height=640, dragmode="lasso", uirevision="map", xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
event = st.plotly_chart(fig, key="bare", on_select="rerun", selection_mode=("lasso", "box"))
if event and event.selection and event.selection.points:
    st.sidebar.write(f"Problems from the map: {len(event.selection.points)}")
'''


# --------------------------------------------------------------------------- phases


def embed_phase(db: Path, n: int, workdir: Path) -> dict:
    from core import problem_map, store

    folder = str(problem_map.packaged_minilm_folder())
    # stored under the folder's path, not the default name: the store's own map is left alone
    with store.connect(db, read_only=False) as con:
        con.execute("DELETE FROM problem_embeddings WHERE model = ?", [folder])
    ids = problem_map.pending_problem_ids(folder, db=db)[:n]
    texts = problem_map._questions(ids, problem_map.MapOptions().max_chars, db)
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts_file = workdir / "embed-texts.parquet"
    pq.write_table(pa.table({"question": texts}), texts_file)
    log(f"embed: ours on {len(ids):,} problems")
    ours = run_child(python_child(["-m", "core", "--db", str(db), "map", "--model", folder, "--max-problems", str(len(ids)),
                                   "--no-project", "--json"]), logdir=workdir, name="embed-ours",
                     env={"HF_HUB_OFFLINE": "1"})
    log("embed: sentence-transformers directly")
    direct = run_child(python_child([SCRIPT, "--child", "direct-encode", str(texts_file), "64"]), logdir=workdir,
                       name="embed-direct", env={"HF_HUB_OFFLINE": "1"})
    ours_result, direct_result = ours.last_json(), direct.last_json()
    assert ours_result["embed"]["embedded"] == len(ids) == direct_result["problems"]
    total_problems = store.read_rows("SELECT count(*) FROM problems", db=db)[0][0]
    # the model's load is a one-off (seconds) that a long run amortises: the rate is over the
    # rest of the stage (reading questions, encoding, committing)
    ours_rate = len(ids) / (ours_result["embed"]["seconds"] - ours_result["embed"]["load_seconds"])
    direct_rate = len(ids) / direct_result["encode_s"]
    return {
        "problems": len(ids), "model": problem_map.DEFAULT_EMBEDDING_MODEL,
        "ours_stage_s": ours_result["embed"]["seconds"], "ours_encode_s": ours_result["embed"]["encode_seconds"],
        "ours_model_load_s": ours_result["embed"]["load_seconds"],
        "ours_wall_s": ours.seconds, "ours_cpu_s": ours.cpu_seconds, "ours_rss_mb": ours.max_rss_bytes / 1e6,
        "ours_per_s": ours_rate, "direct_encode_s": direct_result["encode_s"], "direct_wall_s": direct.seconds,
        "direct_rss_mb": direct.max_rss_bytes / 1e6, "direct_per_s": direct_rate, "ratio": ours_rate / direct_rate,
        "store_problems": total_problems, "extrapolated_store_h": total_problems / ours_rate / 3600,
        "extrapolated_omnithought_h": OMNITHOUGHT_PROBLEMS / ours_rate / 3600,
        "sample_model": folder,
    }


def project_phase(db: Path, n: int, baseline_n: int, sample_model: str, workdir: Path) -> dict:
    from core.problem_map import MapOptions

    opts = MapOptions()
    log(f"project: generating {n:,} embeddings from the real sample")
    gen = run_child(python_child([SCRIPT, "--child", "write-generated", str(db), sample_model, str(n), "0.05", "0"]),
                    logdir=workdir, name="project-generate")
    log("project: ours (python -m core map)")
    ours = run_child(python_child(["-m", "core", "--db", str(db), "map", "--model", GENERATED_MODEL, "--json"]),
                     logdir=workdir, name="project-ours")
    result = ours.last_json()["map"]
    out = {"problems": result["problems"], "clusters": result.get("clusters"), "generate_s": gen.last_json()["write_s"],
           "ours_wall_s": ours.seconds, "ours_cpu_s": ours.cpu_seconds, "ours_rss_mb": ours.max_rss_bytes / 1e6,
           **{f"ours_{k}": result[k] for k in ("read_s", "project_s", "cluster_s", "terms_s", "publish_s")}}
    if baseline_n:
        vectors_file = workdir / "generated-vectors.npy"
        run_child(python_child([SCRIPT, "--child", "dump-vectors", str(db), str(vectors_file)]), logdir=workdir, name="dump")
        log(f"project: baseline, PCA + umap-learn directly at {baseline_n:,}")
        direct = run_child(python_child([SCRIPT, "--child", "direct-project", str(vectors_file), str(baseline_n),
                                         str(opts.pca_dims), str(opts.n_neighbors), str(opts.min_dist), "0"]),
                           logdir=workdir, name="project-direct")
        vectors_file.unlink(missing_ok=True)
        out.update({"baseline_problems": baseline_n, "direct_project_s": direct.last_json()["project_s"],
                    "direct_wall_s": direct.seconds, "direct_rss_mb": direct.max_rss_bytes / 1e6})
        # like for like only at the same size (UMAP's cost grows faster than linearly)
        out["ratio_pca_umap"] = out["ours_project_s"] / out["direct_project_s"] if baseline_n == n else None
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(cmd: list[str], env: dict, log_file: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    with open(log_file, "wb") as fh:
        proc = subprocess.Popen([*cmd, "--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}",
                                 "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
                                cwd=ROOT, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the server did not start: {log_file.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _wait_idle(page, quiet_ms: int = 400, timeout_s: float = 300) -> None:
    app = page.locator("[data-testid='stApp']")
    deadline = time.monotonic() + timeout_s
    since = None
    while time.monotonic() < deadline:
        state = app.get_attribute("data-test-script-state") if app.count() else None
        if state == "notRunning":
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet_ms / 1000:
                return
        else:
            since = None
        page.wait_for_timeout(50)
    raise TimeoutError("the app did not become idle")


def _plot_frame(page, ours: bool):
    """(frame that holds the plot, its offset in the page) once plotly has drawn."""
    if not ours:
        page.wait_for_selector(f"{BARE_PLOT} canvas", state="attached", timeout=300_000)
        return page.main_frame, {"x": 0.0, "y": 0.0}
    page.wait_for_selector(OURS_IFRAME, timeout=300_000)
    page.frame_locator(OURS_IFRAME).locator(f"{OURS_PLOT} canvas").first.wait_for(state="attached", timeout=300_000)
    frame = next(f for f in page.frames if "thoughtscope_map" in f.url)
    return frame, page.locator(OURS_IFRAME).bounding_box()


def _plot(ours: bool) -> str:
    return OURS_PLOT if ours else BARE_PLOT


def _paint(browser, url: str, path: str, ours: bool):
    """Seconds from navigation until the scatter is drawn (plotly's calcdata for its WebGL
    canvas) and the app is idle; returns the page (kept open for the lasso)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(300_000)
    page = context.new_page()
    started = time.perf_counter()
    page.goto(f"{url}{path}", wait_until="domcontentloaded")
    frame, _ = _plot_frame(page, ours)
    frame.wait_for_function(f"() => {{ const gd = document.querySelector(\"{_plot(ours)}\"); return gd && gd._fullLayout && gd.calcdata; }}",
                            timeout=300_000)
    _wait_idle(page)
    return time.perf_counter() - started - 0.4, page, context  # less the idle wait's quiet period


def _lasso(page, ours: bool) -> tuple[float, int]:
    """Draw a lasso over about a fifth of the plot; seconds until the sidebar reports the
    selection and the app is idle, and the count it reports."""
    frame, offset = _plot_frame(page, ours)
    area = frame.evaluate(f"""() => {{
        const gd = document.querySelector("{_plot(ours)}"); const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const b = gd.getBoundingClientRect();
        return {{left: b.left + xa._offset, top: b.top + ya._offset, width: xa._length, height: ya._length}};
    }}""")
    import math

    cx, cy = offset["x"] + area["left"] + 0.45 * area["width"], offset["y"] + area["top"] + 0.5 * area["height"]
    path = [(cx + 0.22 * area["width"] * math.cos(a), cy + 0.3 * area["height"] * math.sin(a))
            for a in [i * 2 * math.pi / 7 + 0.2 for i in range(7)]]
    page.mouse.move(*path[0])
    page.mouse.down()
    for point in path[1:] + path[:1]:
        page.mouse.move(*point, steps=6)
    started = time.perf_counter()
    page.mouse.up()
    page.wait_for_function("() => /Problems from the map: [0-9]/.test(document.body.innerText)", timeout=300_000)
    _wait_idle(page)
    seconds = time.perf_counter() - started - 0.4
    text = page.locator("[data-testid='stSidebar']").inner_text()
    return seconds, int(re.search(r"Problems from the map: ([\d,]+)", text).group(1).replace(",", ""))


def browser_phase(db: Path, source: str, workdir: Path) -> dict:
    """First paint and lasso round trip: the Map page against the bare Streamlit + Plotly page."""
    from playwright.sync_api import sync_playwright

    from core import store

    points = store.read_df("SELECT m.x, m.y, m.cluster FROM problem_map m JOIN score_sources ss USING (source_id) "
                           "WHERE ss.name = ? ORDER BY m.problem_id", [source], db=db)
    points_file = workdir / "points.parquet"
    points.write_parquet(points_file)
    n_points = points.height
    bare_app = workdir / "bare_map_app.py"
    bare_app.write_text(f"POINTS = {str(points_file)!r}\n" + BARE_APP)
    data_dir = workdir / "data"
    env = {"THOUGHTSCOPE_DB": str(db), "THOUGHTSCOPE_DATA": str(data_dir),
           "THOUGHTSCOPE_CACHE": os.environ.get("THOUGHTSCOPE_CACHE", str(ROOT / "data" / "cache"))}
    out: dict = {"points": n_points}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for name, cmd, path in (
            ("bare", [sys.executable, "-m", "streamlit", "run", str(bare_app),
                      f"--server.maxWidgetStateSize={BARE_MAX_WIDGET_STATE_MB}"], "/"),
            ("ours", [sys.executable, "-m", "ui.serve"], "/map"),
        ):
            log(f"browser: {name}")
            ours = name == "ours"
            proc, url = _serve(cmd, env, workdir / f"server-{name}.log")
            try:
                # ours on its defaults: coloured by cluster, the problems the (empty) filter matches
                cold, page, context = _paint(browser, url, path, ours)
                context.close()
                warm, page, context = _paint(browser, url, path, ours)
                if ours:
                    _select_map(page, source)
                lasso_s, selected = _lasso(page, ours)
                context.close()
            finally:
                _stop(proc)
            out[name] = {"first_paint_cold_s": cold, "first_paint_warm_s": warm, "lasso_round_trip_s": lasso_s,
                         "selected": selected}
        browser.close()
    out["ratio_paint_warm"] = out["ours"]["first_paint_warm_s"] / out["bare"]["first_paint_warm_s"]
    out["ratio_lasso"] = out["ours"]["lasso_round_trip_s"] / out["bare"]["lasso_round_trip_s"]
    return out


def _select_map(page, source: str) -> None:
    """Pick ``source`` in the page's map menu when the store has several maps."""
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Map")
    if box.count() and source not in box.first.inner_text():
        box.first.click()
        page.get_by_role("option", name=source).click()
        _wait_idle(page)
        _plot_frame(page, True)


# --------------------------------------------------------------------------- main


def generate_store(n_problems: int, workdir: Path) -> Path:
    from core.demo import write_omnithought
    from core.ingest import ingest

    src = workdir / "omni.jsonl"
    write_omnithought(src, n_problems, seed=0, text_scale=0.01, fmt="jsonl")
    db = workdir / "bench.duckdb"
    ingest(str(src), name="omnithought (generated)", db=db, generated=True)
    return db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a store to measure (the embed phase adds embeddings under a bench model name)")
    parser.add_argument("--generate", type=int, help="generate a store of this many problems instead")
    parser.add_argument("--embed-sample", type=int, default=2000)
    parser.add_argument("--project-n", type=int, help="problems in the projection phase (default: all of the store's)")
    parser.add_argument("--baseline-project-n", type=int, default=None, help="problems for the direct-UMAP baseline")
    parser.add_argument("--phases", default="embed,project", help="comma-separated: embed, project, browser")
    parser.add_argument("--browser", action="store_true", help="also run the browser phase")
    parser.add_argument("--workdir")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "direct-encode":
            child_direct_encode(rest[0], int(rest[1]))
        elif kind == "direct-project":
            child_direct_project(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4]), int(rest[5]))
        elif kind == "write-generated":
            child_write_generated(rest[0], rest[1], int(rest[2]), float(rest[3]), int(rest[4]))
        elif kind == "dump-vectors":
            child_dump_vectors(rest[0], rest[1])
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-map-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = Path(args.store) if args.store else generate_store(args.generate or 300, workdir)
    phases = set(args.phases.split(",")) | ({"browser"} if args.browser else set())
    from core import store

    n_store = store.read_rows("SELECT count(*) FROM problems", db=db)[0][0]
    result: dict = {"store": str(db), "store_problems": n_store, "load_before": machine_load()}
    sample_model = None
    if "embed" in phases:
        result["embed"] = embed_phase(db, min(args.embed_sample, n_store), workdir)
        sample_model = result["embed"]["sample_model"]
    if "project" in phases:
        if sample_model is None:
            from core.problem_map import packaged_minilm_folder

            sample_model = str(packaged_minilm_folder())
        n = min(args.project_n or n_store, n_store)
        result["project"] = project_phase(db, n, min(args.baseline_project_n or n, n), sample_model, workdir)
    if "browser" in phases:
        result["browser"] = browser_phase(db, f"map ({GENERATED_MODEL})", workdir)
    result["load_after"] = machine_load()
    print_tables(result)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def print_tables(result: dict) -> None:
    if "embed" in result:
        e = result["embed"]
        print(format_table(
            ["embedding", "problems", "problems/s", "encode s", "stage s (model load)", "wall s", "peak RSS MB", "ratio"],
            [["ours: python -m core map", e["problems"], e["ours_per_s"], e["ours_encode_s"],
              f"{e['ours_stage_s']:.1f} ({e['ours_model_load_s']:.1f})", e["ours_wall_s"], e["ours_rss_mb"], e["ratio"]],
             ["sentence-transformers directly", e["problems"], e["direct_per_s"], e["direct_encode_s"], "-", e["direct_wall_s"],
              e["direct_rss_mb"], 1.0]]))
        print(f"At {e['ours_per_s']:.1f} problems/s the store's {e['store_problems']:,} problems take "
              f"{e['extrapolated_store_h']:.1f} h, OmniThought's {OMNITHOUGHT_PROBLEMS:,} {e['extrapolated_omnithought_h']:.1f} h.\n")
    if "project" in result:
        p = result["project"]
        rows = [["ours: read + PCA/UMAP + k-means + words + publish", p["problems"], p["ours_wall_s"], p["ours_project_s"],
                 p["ours_cluster_s"], p["ours_publish_s"], p["ours_rss_mb"]]]
        if "direct_project_s" in p:
            rows.append(["PCA + umap-learn directly", p["baseline_problems"], p["direct_wall_s"], p["direct_project_s"], None, None,
                         p["direct_rss_mb"]])
        print(format_table(["projection", "problems", "wall s", "PCA+UMAP s", "k-means s", "publish s", "peak RSS MB"], rows) + "\n")
    if "browser" in result:
        b = result["browser"]
        print(format_table(
            ["page (chromium)", "points", "first paint cold s", "first paint warm s", "lasso round trip s", "selected"],
            [[name, b["points"], b[name]["first_paint_cold_s"], b[name]["first_paint_warm_s"], b[name]["lasso_round_trip_s"],
              b[name]["selected"]] for name in ("bare", "ours")]))


if __name__ == "__main__":
    sys.exit(main())
