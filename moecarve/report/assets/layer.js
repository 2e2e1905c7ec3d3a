// Charts of the chosen layer (histogram, co-selection, transitions, tokens) and the controls.
(function () {
  "use strict";
  const C = window.MoecarveCharts;
  const { D, MOE, BY_LAYER, SOURCES, state, $, pct, num, color } = C;
  const experts = (n) => [...Array(n).keys()];

  function drawHist() {
    const H = D.histograms, h = H.layers[String(state.layer)];
    if (!h || !H.edges.length) return C.empty("chart-hist", "no neuron statistics (neuron_stats.json) for this layer");
    const x = H.edges.slice(0, -1).map((e, i) => (e + H.edges[i + 1]) / 2);
    const width = H.edges[1] - H.edges[0];
    const bar = (part, name, col) => ({ type: "bar", x, y: h[part], name, width, marker: { color: col },
      customdata: x.map((c) => Math.pow(10, c)), hovertemplate: `${name}: %{y} neurons at rate ≈ %{customdata:.2g}<extra></extra>` });
    const lo = Math.floor(H.edges[0]), hi = Math.ceil(H.edges[H.edges.length - 1]);
    const ticks = [];
    for (let t = lo; t <= hi; t++) ticks.push(t);
    const shapes = [], annotations = [];
    if (h.cut) {
      const c = Math.log10(h.cut);
      shapes.push(Object.assign(C.vline(c), { line: { color: "#dc2626", width: 2, dash: "dash" } }));
      annotations.push({ x: c, y: 1, xref: "x", yref: "paper", text: `shared cut ${h.cut.toPrecision(2)}`,
                         showarrow: false, xanchor: "right", font: { color: "#dc2626" } });
    }
    const zero = h.zero.shared + h.zero.routed;
    $("hist-note").textContent = `layer ${state.layer}: share of ${h.tokens} calibration tokens where a neuron is among ` +
      `the top-${h.marker_top_k} |activations|` + (zero ? `; ${zero} neurons never were (not shown)` : "");
    return C.plot("chart-hist", [bar("shared", "shared expert", "#f59e0b"), bar("routed", "routed experts", "#60a5fa")], {
      barmode: "stack", bargap: 0, shapes, annotations,
      xaxis: Object.assign({ title: { text: "activation rate (log scale)" }, tickvals: ticks,
                             ticktext: ticks.map((t) => String(Math.pow(10, t).toPrecision(1))) }, C.AXIS),
      yaxis: Object.assign({ title: { text: "neurons" } }, C.AXIS),
    });
  }

  function matrix(id, z, xs, ys, xTitle, yTitle, hover) {
    return C.plot(id, [{ type: "heatmap", z, x: xs, y: ys, colorscale: "Blues", reversescale: true, zmin: 0, xgap: 1, ygap: 1,
                         colorbar: { tickformat: ".0%", thickness: 12 }, hovertemplate: hover + "<extra></extra>" }], {
      xaxis: Object.assign({ title: { text: xTitle }, dtick: xs.length > 32 ? 4 : 1 }, C.AXIS),
      yaxis: Object.assign({ title: { text: yTitle }, autorange: "reversed", dtick: ys.length > 32 ? 4 : 1 }, C.AXIS),
    });
  }

  function drawCosel() {
    const st = C.layerStats(state.layer);
    if (!st || !st.coselection) return C.empty("chart-cosel", "no co-selection statistics for this layer");
    const E = st.coselection.length;
    return matrix("chart-cosel", st.coselection, experts(E), experts(E), "expert", "expert",
                  `layer ${state.layer}: experts %{y} and %{x}<br>%{z:.1%} of tokens`);
  }

  function drawTrans() {
    const T = D.transitions || {};
    let t = T[String(state.layer)];
    if (!t) t = Object.values(T).find((v) => v.to === state.layer);  // last MoE layer: show the way in
    if (!t) return C.empty("chart-trans", "needs token routes of at least two MoE layers (token_routes.json)");
    $("trans-note").textContent = `layer ${t.from} → layer ${t.to}, on the ${D.tokens.tokens.length}-token sample`;
    return matrix("chart-trans", t.share, experts(t.share[0].length), experts(t.share.length),
                  `expert at layer ${t.to}`, `expert at layer ${t.from}`,
                  `expert %{y} at layer ${t.from} → expert %{x} at layer ${t.to}<br>%{z:.1%} of tokens`);
  }

  // Newlines show as ↵; a run of newline-only tokens breaks the line once, after the run.
  function newlines(text, next) {
    if (!text.includes("\n")) return text;
    const shown = text.replace(/\n/g, "↵");
    return next !== undefined && /^\n+$/.test(next) ? shown : shown + "\n";
  }

  function drawTokens() {
    const box = $("token-text"), legend = $("token-legend");
    const T = D.tokens, routes = T && T.layers[String(state.layer)];
    if (!routes) {
      box.innerHTML = '<div class="empty">no token routes for this layer (token_routes.json)</div>';
      legend.replaceChildren();
      return Promise.resolve();
    }
    const E = BY_LAYER[state.layer].num_experts, counts = new Array(E).fill(0);
    $("tokens-note").textContent = `${T.tokens.length} tokens of ${T.source} text, coloured by the top routed expert at ` +
      `layer ${state.layer}; hover for every layer`;
    box.replaceChildren(...T.tokens.map((text, i) => {
      const span = document.createElement("span"), top = routes[i][0];
      counts[top] += 1;
      span.className = "tok";
      span.dataset.index = i;
      span.textContent = newlines(text, T.tokens[i + 1]);
      span.style.background = color(top, 0.9);
      span.title = `layer ${state.layer}: experts ${routes[i].join(", ")}`;
      return span;
    }));
    legend.replaceChildren(...counts.map((n, e) => {
      const s = document.createElement("span");
      s.style.background = color(e, 0.9);
      s.textContent = `E${e}: ${n}`;
      s.title = `expert ${e} is the top expert of ${n} tokens`;
      return s;
    }));
    return Promise.resolve();
  }

  function showToken(i) {
    const T = D.tokens;
    const rows = Object.keys(T.layers).map((l) => {
      const sel = T.layers[l][i].map(Number).join(","), n = Number(l);
      return n === state.layer ? `<b>L${n}: ${sel}</b>` : `L${n}: ${sel}`;
    });
    const label = document.createElement("b");
    label.textContent = JSON.stringify(T.tokens[i]);
    $("token-detail").replaceChildren(label, ` (token ${i}, id ${T.ids[i]}) experts per layer — `);
    $("token-detail").insertAdjacentHTML("beforeend", rows.join(" · "));
  }

  // --- controls ------------------------------------------------------------------------
  function facts() {
    const l = BY_LAYER[state.layer], st = C.layerStats(state.layer) || {};
    const sec = D.layer_seconds[String(state.layer)];
    $("layer-facts").textContent = `layer ${l.layer}: ${l.num_experts} routed experts × ${l.expert_size} neurons, top-` +
      `${l.num_experts_per_tok}, shared ${l.shared_size} neurons · load CV ${num(st.load_cv)} · recall ${pct(st.recall)}` +
      (sec == null ? "" : ` · carved in ${num(sec, 1)} s`);
  }

  function drawLayer() {
    facts();
    return Promise.all([drawHist(), drawCosel(), drawTrans(), drawTokens()]);
  }

  function drawAll() {
    return Promise.all([C.drawLoad(), C.drawImbalance(), C.drawQuality(), drawLayer()]);
  }

  function setLayer(layer) {
    if (!MOE.includes(layer)) return Promise.resolve();
    state.layer = layer;
    $("layer-select").value = String(layer);
    return drawAll();
  }

  function setSource(source) {
    state.source = source;
    $("source-select").value = source;
    return drawAll();
  }

  function controls() {
    const sel = $("layer-select"), src = $("source-select");
    sel.replaceChildren(...MOE.map((l) => new Option(`${l}`, String(l))));
    const label = { heldout: "held-out text", calibration: "calibration" };
    src.replaceChildren(...SOURCES.map((s) => new Option(`${label[s] || s} (${(D.sources[s][String(MOE[0])] || {}).tokens} tokens)`, s)));
    sel.addEventListener("change", () => setLayer(Number(sel.value)));
    src.addEventListener("change", () => setSource(src.value));
    $("layer-prev").addEventListener("click", () => setLayer(MOE[Math.max(0, MOE.indexOf(state.layer) - 1)]));
    $("layer-next").addEventListener("click", () => setLayer(MOE[Math.min(MOE.length - 1, MOE.indexOf(state.layer) + 1)]));
    $("chart-load").on("plotly_click", (ev) => setLayer(Number(ev.points[0].y)));
    $("token-text").addEventListener("mouseover", (ev) => {
      if (ev.target.dataset && ev.target.dataset.index != null) showToken(Number(ev.target.dataset.index));
    });
  }

  C.header();
  if (!MOE.length) {
    document.querySelector("main").innerHTML = '<section class="wide"><div class="empty">every layer is dense: nothing was routed</div></section>';
    document.body.dataset.ready = "true";
    return;
  }
  drawAll().then(() => {
    controls();
    document.body.dataset.ready = "true";
  }).catch((err) => { console.error(err); document.body.dataset.ready = "error"; });
  window.moecarveDashboard = { state, setLayer, setSource };
})();
