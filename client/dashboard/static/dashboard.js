// retia dashboard: every page polls the JSON API (/api/...) and redraws; no build step, no framework.
"use strict";
const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 1000;

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(4);
  return typeof v === "string" ? v : JSON.stringify(v);
}
function facts(tbody, pairs) {
  tbody.replaceChildren(...pairs.map(([k, v]) => { const tr = el("tr"); tr.append(el("td", k), el("td", v)); return tr; }));
}
function poll(fn) {
  const status = document.getElementById("status");
  const tick = async () => {
    try { await fn(); status.textContent = ""; } catch (e) { status.textContent = e.message; }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

function overviewPage() {
  poll(async () => {
    const o = await api("/api/overview");
    document.getElementById("title").textContent = o.experiment_id;
    facts(document.getElementById("facts"), [
      ["directory", o.path], ["direction", o.direction], ["trials", `${o.trials} of ${o.max_trials}`],
      ["best", o.best ? `${fmt(o.best.metric)} (trial #${o.best.key}) ${JSON.stringify(o.best.arch)}` : "-"],
      ["elapsed", `${Math.round(o.elapsed)} s`],
      ["trials per minute", o.trials_per_minute === null ? "-" : o.trials_per_minute.toFixed(1)],
      ["remaining budget", `${o.remaining_trials} trials`],
    ]);
    facts(document.getElementById("counts"), Object.entries(o.counts));
    document.getElementById("counts").querySelectorAll("tr").forEach((tr) => tr.id = "count-" + tr.firstChild.textContent);
  });
}

function loadPlotly() {
  // plotly.js (4 MB) loads beside the first page of the table, not before it
  return new Promise((resolve, reject) => {
    const script = el("script", null, { src: "/static/plotly.min.js" });
    script.onload = resolve; script.onerror = () => reject(new Error("plotly.min.js did not load"));
    document.head.append(script);
  });
}

function trialsPage() {
  const plotly = loadPlotly();
  const view = { page: 1, per_page: 50, sort: "key", order: "asc" };
  const selected = new Set();
  let labels = [];
  const columns = () => [["key", "#"], ["state", "state"], ["metric", "metric"], ["duration", "duration (s)"],
    ["attempt", "attempt"], ["seed", "seed"], ...labels.map((l) => ["arch." + l, l])];
  let drawn = "";
  const drawHead = () => {
    const head = document.getElementById("head");
    const signature = JSON.stringify([labels, view.sort, view.order]);
    if (signature === drawn) return;  // unchanged: keep the elements (a click on one stays valid)
    drawn = signature;
    head.replaceChildren(el("th", "plot"), ...columns().map(([key, name]) => {
      const th = el("th", name + (view.sort === key ? (view.order === "asc" ? " ▲" : " ▼") : ""), { "data-sort": key });
      th.onclick = () => { view.order = view.sort === key && view.order === "asc" ? "desc" : "asc"; view.sort = key; refresh(); };
      return th;
    }));
  };
  const cell = (row, key) => key.startsWith("arch.") ? fmt(row.arch[key.slice(5)]) :
    key === "duration" && row.duration !== null ? row.duration.toFixed(1) : fmt(row[key]);
  async function refresh() {
    const q = new URLSearchParams({ ...view, state: document.getElementById("state").value,
      q: document.getElementById("filter").value });
    const p = await api("/api/trials?" + q);
    labels = p.labels;
    drawHead();
    document.getElementById("rows").replaceChildren(...p.rows.map((row) => {
      const tr = el("tr", null, { "data-key": row.key, class: row.state });
      const box = el("input", null, { type: "checkbox" });
      box.checked = selected.has(row.key);
      box.onchange = () => { box.checked ? selected.add(row.key) : selected.delete(row.key); curves(); };
      const pick = el("td"); pick.append(box); tr.append(pick);
      for (const [key] of columns()) {
        const td = el("td");
        if (key === "key") td.append(el("a", "#" + row.key, { href: "/trial?key=" + row.key }));
        else td.textContent = cell(row, key);
        tr.append(td);
      }
      return tr;
    }));
    const pages = Math.max(1, Math.ceil(p.total / p.per_page));
    document.getElementById("pageinfo").textContent = `page ${p.page} of ${pages} · ${p.total} of ${p.all} trials`;
    document.getElementById("pageinfo").dataset.total = p.total;
    document.getElementById("prev").disabled = p.page <= 1;
    document.getElementById("next").disabled = p.page >= pages;
    return p;
  }
  async function metrics() {
    const [m] = await Promise.all([api("/api/metrics"), plotly]);
    Plotly.react("metric-plot", [
      { x: m.keys, y: m.metrics, mode: "markers", type: m.keys.length > 5000 ? "scattergl" : "scatter", name: "final metric" },
      { x: m.keys, y: m.best, mode: "lines", line: { shape: "hv" }, name: "best so far" },
    ], { margin: { t: 20 }, xaxis: { title: { text: "trial" } }, yaxis: { title: { text: `metric (${m.direction})` } } });
    if (m.keys.length) parallel(m);
  }
  const PARALLEL_MAX = 2000;  // parcoords is WebGL work: the latest 2,000 scored trials at most
  function parallel(m) {
    // one axis per label (categories as their index, named on the axis) and the metric, one line per trial
    const from = Math.max(0, m.keys.length - PARALLEL_MAX), metrics = m.metrics.slice(from);
    const dims = m.labels.map((label) => {
      const values = m.arch[label].slice(from);
      if (values.every((v) => typeof v === "number")) return { label, values };
      const names = [...new Set(values.map(fmt))];
      return { label, values: values.map((v) => names.indexOf(fmt(v))), tickvals: names.map((_, i) => i), ticktext: names };
    });
    dims.push({ label: "metric", values: metrics });
    Plotly.react("parallel-plot", [{ type: "parcoords", line: { color: metrics, colorscale: "Viridis", showscale: true }, dimensions: dims }],
      { margin: { t: 40, l: 60, r: 60 } });
  }
  async function curves() {
    await plotly;
    const keys = [...selected];
    const c = keys.length ? await api("/api/curves?keys=" + keys.join(",")) : { curves: [] };
    Plotly.react("curve-plot", c.curves.map((cv) => ({ y: cv.values, x: cv.values.map((_, i) => i + 1), mode: "lines+markers", name: "#" + cv.key })),
      { margin: { t: 20 }, xaxis: { title: { text: "report" } } });
  }
  document.getElementById("state").onchange = () => { view.page = 1; refresh(); };
  document.getElementById("filter").oninput = () => { view.page = 1; refresh(); };
  document.getElementById("prev").onclick = () => { view.page -= 1; refresh(); };
  document.getElementById("next").onclick = () => { view.page += 1; refresh(); };
  // the metric plot is fetched again only when it can have changed (new results) or every 5th tick
  let tick = 0, plotted = null;
  poll(async () => {
    const changed = (p) => plotted === null || p.all !== plotted || tick % 5 === 0;
    const [p] = await Promise.all([refresh(), tick === 0 ? metrics() : null]);
    if (tick > 0 && changed(p)) await metrics();
    plotted = p.all; tick += 1;
    if (selected.size) await curves();
  });
}

function drawGraph(box, g) {
  // one row per node in the file's (topological) order, an edge from each producer to its consumers
  const ns = "http://www.w3.org/2000/svg", rowH = 34, width = 420;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", g.nodes.length * rowH + 10); svg.id = "onnx-graph";
  const row = {};
  g.nodes.forEach((n, i) => n.outputs.forEach((o) => { row[o] = i; }));
  g.nodes.forEach((n, i) => n.inputs.forEach((inp) => {
    if (row[inp] === undefined) return;
    const line = document.createElementNS(ns, "path");
    const y0 = row[inp] * rowH + 28, y1 = i * rowH + 6, bend = 150 + 12 * (i - row[inp]);
    line.setAttribute("d", i - row[inp] === 1 ? `M100 ${y0} L100 ${y1}` : `M100 ${y0} C${bend} ${y0} ${bend} ${y1} 100 ${y1}`);
    line.setAttribute("stroke", "#888"); line.setAttribute("fill", "none"); svg.append(line);
  }));
  g.nodes.forEach((n, i) => {
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", 20); rect.setAttribute("y", i * rowH + 6); rect.setAttribute("width", 160);
    rect.setAttribute("height", 22); rect.setAttribute("fill", "#dde8f6"); rect.setAttribute("stroke", "#557");
    rect.setAttribute("class", "onnx-node");
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 28); text.setAttribute("y", i * rowH + 21);
    text.textContent = n.op + (n.weights.length ? ` (${n.weights.length} weights)` : "");
    const title = document.createElementNS(ns, "title"); title.textContent = `${n.name}: ${n.inputs.join(", ")} -> ${n.outputs.join(", ")}`;
    rect.append(title); svg.append(rect, text);
  });
  box.replaceChildren(el("p", `inputs: ${g.inputs.join(", ")} · outputs: ${g.outputs.join(", ")} · ${g.nodes.length} nodes`), svg);
}

function trialPage() {
  const key = new URLSearchParams(location.search).get("key");
  let graphDrawn = false;
  poll(async () => {
    const t = await api(`/api/trials/${key}`);
    const r = t.row;
    document.getElementById("title").textContent = `trial #${r.key} · ${r.state}`;
    facts(document.getElementById("facts"), [["id", r.trial_id], ["state", r.state], ["metric", fmt(r.metric)],
      ["final", fmt(t.final)], ["attempt", r.attempt], ["seed", fmt(r.seed)], ["devices", r.devices],
      ["duration", r.duration === null ? "" : r.duration.toFixed(1) + " s"], ["reason", r.reason], ["output", t.output_dir]]);
    facts(document.getElementById("arch"), Object.entries(r.arch).map(([k, v]) => [k, fmt(v)]));
    document.getElementById("reports").replaceChildren(...t.intermediates.map((m) => el("li", fmt(m))));
    document.getElementById("failure").hidden = !t.traceback;
    document.getElementById("traceback").textContent = t.traceback;
    document.getElementById("files").replaceChildren(...t.files.map((f) => {
      const li = el("li");
      li.append(el("a", f.name, { href: `/api/trials/${r.key}/files/${f.name.split("/").map(encodeURIComponent).join("/")}`, download: f.name }), ` (${f.size} bytes)`);
      return li;
    }));
    const log = await api(`/api/trials/${key}/log`);
    document.getElementById("log").textContent = log.text;
    if (t.has_onnx && !graphDrawn) {
      graphDrawn = true;
      document.getElementById("graph-box").hidden = false;
      drawGraph(document.getElementById("graph"), await api(`/api/trials/${key}/graph`));
    }
  });
}

function clusterPage() {
  poll(async () => {
    const c = await api("/api/cluster");
    document.getElementById("title").textContent = `${c.dispatcher} at ${c.address} · up ${Math.round(c.uptime)} s`;
    document.getElementById("counts").textContent = Object.entries(c.counts).map(([s, n]) => `${s.toLowerCase()} ${n}`).join(", ");
    document.getElementById("workers").replaceChildren(...c.workers.map((w) => {
      const tr = el("tr", null, { "data-worker": w.worker_id });
      for (const v of [w.worker_id, w.host, w.gpu, w.state, w.trial || "-", Math.round(w.uptime) + " s", w.last_devices || "-"]) tr.append(el("td", v));
      return tr;
    }));
  });
}

({ overview: overviewPage, trials: trialsPage, trial: trialPage, cluster: clusterPage })[document.body.dataset.page]();
