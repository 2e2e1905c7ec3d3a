// moecarve expert-activation dashboard: draws the payload embedded in #moecarve-data with Plotly.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("moecarve-data").textContent);
  const MOE = D.layers.filter((l) => !l.dense).map((l) => l.layer);
  const BY_LAYER = Object.fromEntries(D.layers.map((l) => [l.layer, l]));
  const SOURCES = Object.keys(D.sources);
  const state = { layer: MOE[0], source: SOURCES[0] };
  const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };  // drag to zoom, double-click resets
  const AXIS = { gridcolor: "#eef0f3", zeroline: false };
  const BASE = { margin: { l: 56, r: 16, t: 30, b: 44 }, font: { size: 11 }, hovermode: "closest",
                 legend: { orientation: "h", y: 1.02, yanchor: "bottom", x: 0 } };
  const $ = (id) => document.getElementById(id);
  const pct = (v, d = 1) => (v == null ? "–" : (100 * v).toFixed(d) + "%");
  const num = (v, d = 2) => (v == null ? "–" : Number(v).toFixed(d));
  const mega = (n) => (n == null ? "–" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : (n / 1e3).toFixed(1) + "k");
  const color = (e, a = 1) => `hsla(${(e * 137.508) % 360}, 70%, 72%, ${a})`;
  const stats = () => D.sources[state.source] || {};
  const layerStats = (l) => stats()[String(l)];
  const layout = (extra) => Object.assign({}, BASE, extra);
  const vline = (x) => ({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
                          line: { color: "#1f2933", width: 1, dash: "dot" } });

  function empty(id, message) {
    Plotly.purge($(id));
    $(id).innerHTML = `<div class="empty">${message}</div>`;
    return Promise.resolve();
  }

  function plot(id, traces, lay) {
    const el = $(id);
    if (el.querySelector(".empty")) el.innerHTML = "";
    return Plotly.react(el, traces, layout(lay), CONFIG);
  }

  // --- header --------------------------------------------------------------------------
  function header() {
    const s = D.summary;
    $("title").textContent = `${s.layout} MoE carved from ${s.base_model}`;
    document.title = `moecarve · ${s.layout} · ${s.base_model}`;
    const ppl = s.ppl_carved == null ? ["not measured", ""]
      : [`${num(s.ppl_dense)} → ${num(s.ppl_carved)}`, `×${num(s.ppl_ratio, 3)} on ${s.eval_tokens} tokens`];
    const cards = [
      ["base model", s.base_model, `${s.model_type}, ${s.num_layers} layers, d_ff ${s.intermediate_size}`],
      ["layout", s.layout, `${s.moe_layers} of ${s.num_layers} layers MoE`],
      ["active FFN", pct(s.active_ffn_fraction), "of the dense FFN per token"],
      ["active params", mega(s.active_params), `of ${mega(s.total_params)} (estimate)`],
      ["held-out perplexity", ppl[0], ppl[1] ? "dense → carved, " + ppl[1] : ""],
      ["carve time", s.carve_seconds == null ? "–" : `${num(s.carve_seconds, 1)} s`, s.created || ""],
    ];
    $("summary").replaceChildren(...cards.map(([k, v, sub]) => {
      const div = document.createElement("div");
      div.className = "card";
      div.innerHTML = '<div class="k"></div><div class="v"></div><div class="s"></div>';
      [div.children[0].textContent, div.children[1].textContent, div.children[2].textContent] = [k, v, sub];
      return div;
    }));
    $("recipe").textContent = D.recipe_yaml || "(no recipe.yaml)";
    $("footer").textContent = `moecarve ${s.moecarve_version || ""} · statistics from routing_stats.json, ` +
      "neuron_stats.json and token_routes.json beside the checkpoint";
  }

  // --- all layers ----------------------------------------------------------------------
  function drawLoad() {
    const maxE = Math.max(...MOE.map((l) => BY_LAYER[l].num_experts));
    const ys = D.layers.map((l) => l.layer);
    const z = [], ratio = [], nx = [], ny = [];
    for (const l of D.layers) {
      const st = layerStats(l.layer);
      const row = new Array(maxE).fill(null), rrow = new Array(maxE).fill(null);
      if (st && !l.dense) {
        st.expert_load.forEach((v, e) => { row[e] = v * l.num_experts_per_tok; rrow[e] = v * l.num_experts; });
        for (const e of st.never_selected || []) { nx.push(e); ny.push(l.layer); }
      }
      z.push(row); ratio.push(rrow);
    }
    const traces = [{
      type: "heatmap", z, x: [...Array(maxE).keys()], y: ys, customdata: ratio, colorscale: "YlGnBu", reversescale: true,
      zmin: 0, colorbar: { title: { text: "tokens", side: "right" }, tickformat: ".0%", thickness: 12 }, xgap: 1, ygap: 1,
      hovertemplate: "layer %{y} · expert %{x}<br>%{z:.1%} of tokens<br>×%{customdata:.2f} the mean load<extra></extra>",
    }];
    if (nx.length) {
      traces.push({ type: "scatter", mode: "markers", x: nx, y: ny, name: "never selected", showlegend: false,
                    marker: { symbol: "x-thin-open", size: 9, color: "#b91c1c", line: { width: 2 } },
                    hovertemplate: "layer %{y} · expert %{x}<br>never selected<extra></extra>" });
    }
    const rect = { type: "rect", xref: "x", yref: "y", x0: -0.5, x1: maxE - 0.5, y0: state.layer - 0.5,
                   y1: state.layer + 0.5, line: { color: "#dc2626", width: 2 } };
    $("chart-load").style.height = `${Math.max(300, 15 * ys.length + 80)}px`;  // readable rows at 30+ layers
    return plot("chart-load", traces, {
      xaxis: Object.assign({ title: { text: "expert" }, dtick: maxE > 32 ? 4 : 1 }, AXIS),
      yaxis: Object.assign({ title: { text: "layer" }, autorange: "reversed", dtick: ys.length > 32 ? 2 : 1 }, AXIS),
      shapes: [rect], margin: { l: 56, r: 16, t: 8, b: 40 },
    });
  }

  const layerAxis = () => Object.assign({ title: { text: "layer" }, dtick: MOE.length > 16 ? 2 : 1 }, AXIS);

  function perLayer(key) {
    return MOE.map((l) => (layerStats(l) || {})[key]);
  }

  function drawImbalance() {
    const line = (key, name, axis = "y") => ({ type: "scatter", mode: "lines+markers", x: MOE, y: perLayer(key), name,
                                              yaxis: axis, marker: { size: 5 } });
    const never = MOE.map((l) => ((layerStats(l) || {}).never_selected || []).length);
    return plot("chart-imbalance", [
      { type: "bar", x: MOE, y: never, name: "never-selected experts", marker: { color: "#fca5a5" } },
      line("load_cv", "load CV"), line("load_max_over_mean", "max / mean"),
      line("load_entropy", "load entropy (norm.)", "y2"), line("router_entropy", "router entropy (norm.)", "y2"),
    ], {
      xaxis: layerAxis(),
      yaxis: Object.assign({ title: { text: "CV, max/mean, count" }, rangemode: "tozero" }, AXIS),
      yaxis2: { overlaying: "y", side: "right", range: [0, 1.05], dtick: 0.25, title: { text: "entropy" }, showgrid: false },
      shapes: [vline(state.layer)], margin: { l: 56, r: 48, t: 30, b: 44 },
    });
  }

  function drawQuality() {
    const line = (key, name) => ({ type: "scatter", mode: "lines+markers", x: MOE, y: perLayer(key), name, marker: { size: 5 } });
    return plot("chart-quality", [
      line("reconstruction_error", "reconstruction error (rel.)"), line("recall", "router recall of dense mass"),
      line("shared_output_share", "shared share of output"),
    ], {
      xaxis: layerAxis(),
      yaxis: Object.assign({ tickformat: ".0%", rangemode: "tozero" }, AXIS),
      shapes: [vline(state.layer)],
    });
  }

  window.MoecarveCharts = { D, MOE, BY_LAYER, SOURCES, state, $, pct, num, color, layerStats, plot, empty, vline, AXIS,
                            header, drawLoad, drawImbalance, drawQuality };
})();
