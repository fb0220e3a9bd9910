// The admin page's Health section: the served model's windows over time (GET /v1/monitor) drawn as inline SVG
// charts, the open alerts with a Resolve button, and "Evaluate now" (the holdout evaluation job). It runs beside
// admin.js: it starts when the workspace shows (after an admin signed in) and empties itself on sign-out.
"use strict";

(() => {
  const { api, el, $, say, pct, when } = hrlm;
  const NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 30000;
  const W = 480;
  const H = 170;
  const PAD = { left: 44, right: 12, top: 12, bottom: 26 };
  let timer = null;
  let busy = false;
  let again = false;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function num(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits === undefined ? 3 : digits);
  }

  const finite = (v) => typeof v === "number" && Number.isFinite(v);

  // Consecutive windows that have a value, as polyline point lists: a window without one breaks the line.
  function segments(values, x, y) {
    const out = [];
    let current = [];
    values.forEach((v, i) => {
      if (finite(v)) current.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
      else if (current.length) { out.push(current); current = []; }
    });
    if (current.length) out.push(current);
    return out;
  }

  // One chart: `lines` [{name, values, cls}], optional `bars` {name, values, cls}, `band` {low, high, name},
  // `points` [{i, value, title}], `thresholds` [{value, name}], a y range and a number format.
  function chart(spec) {
    const n = spec.labels.length;
    const all = [];
    for (const line of spec.lines || []) all.push(...line.values.filter(finite));
    if (spec.bars) all.push(...spec.bars.values.filter(finite));
    if (spec.band) all.push(...spec.band.low.filter(finite), ...spec.band.high.filter(finite));
    for (const p of spec.points || []) if (finite(p.value)) all.push(p.value);
    for (const t of spec.thresholds || []) if (finite(t.value)) all.push(t.value);
    let lo = spec.min !== undefined ? spec.min : Math.min(0, ...all);
    let hi = spec.max !== undefined ? spec.max : Math.max(...all, lo + 1e-9);
    if (spec.max === undefined) hi = hi + (hi - lo) * 0.08;
    if (hi <= lo) hi = lo + 1;
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    const step = n > 1 ? plotW / (n - 1) : 0;
    const x = (i) => PAD.left + (n > 1 ? i * step : plotW / 2);
    const y = (v) => PAD.top + plotH - ((Math.min(Math.max(v, lo), hi) - lo) / (hi - lo)) * plotH;
    const fmt = spec.format || ((v) => num(v, 2));

    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": spec.id + "-t" });
    root.append(svg("title", { id: spec.id + "-t" }, spec.summary));
    for (const v of [lo, (lo + hi) / 2, hi]) {
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
      root.append(svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, fmt(v)));
    }
    if (n) {
      root.append(svg("text", { x: x(0), y: H - 8, class: "tick", "text-anchor": n > 1 ? "start" : "middle" }, spec.labels[0]));
      if (n > 1) root.append(svg("text", { x: x(n - 1), y: H - 8, class: "tick", "text-anchor": "end" }, spec.labels[n - 1]));
    }
    if (spec.bars) {
      const bw = Math.max(2, Math.min(28, (n > 1 ? step : plotW) * 0.7));
      spec.bars.values.forEach((v, i) => {
        if (!finite(v) || v <= lo) return;
        root.append(svg("rect", { x: x(i) - bw / 2, y: y(v), width: bw, height: Math.max(0, y(lo) - y(v)), class: "vbar " + spec.bars.cls },
          svg("title", {}, `${spec.labels[i]}: ${fmt(v)}`)));
      });
    }
    if (spec.band) {
      const { low, high } = spec.band;
      let run = [];
      const flush = () => {
        if (run.length) {
          const top = run.map((i) => `${x(i).toFixed(1)},${y(high[i]).toFixed(1)}`);
          const bottom = run.slice().reverse().map((i) => `${x(i).toFixed(1)},${y(low[i]).toFixed(1)}`);
          if (run.length === 1) { // one window: a short vertical band
            const i = run[0];
            root.append(svg("line", { x1: x(i), x2: x(i), y1: y(low[i]), y2: y(high[i]), class: "band-line" }));
          } else {
            root.append(svg("polygon", { points: top.concat(bottom).join(" "), class: "band" }));
          }
        }
        run = [];
      };
      low.forEach((v, i) => (finite(v) && finite(high[i]) ? run.push(i) : flush()));
      flush();
    }
    for (const t of spec.thresholds || []) {
      if (!finite(t.value)) continue;
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(t.value), y2: y(t.value), class: "threshold" },
        svg("title", {}, `${t.name}: ${fmt(t.value)}`)));
    }
    for (const line of spec.lines || []) {
      for (const seg of segments(line.values, x, y)) {
        if (seg.length > 1) root.append(svg("polyline", { points: seg.join(" "), class: "line " + line.cls }));
      }
      line.values.forEach((v, i) => {
        if (finite(v)) root.append(svg("circle", { cx: x(i), cy: y(v), r: 2.5, class: "dot " + line.cls },
          svg("title", {}, `${line.name}, ${spec.labels[i]}: ${fmt(v)}`)));
      });
    }
    for (const p of spec.points || []) {
      if (!finite(p.value)) continue;
      root.append(svg("rect", { x: x(p.i) - 4, y: y(p.value) - 4, width: 8, height: 8, class: "point", transform: `rotate(45 ${x(p.i)} ${y(p.value)})` },
        svg("title", {}, p.title)));
    }

    const legend = el("ul", { class: "legend" });
    const swatch = (cls, name) => legend.append(el("li", {}, el("span", { class: "swatch " + cls, "aria-hidden": "true" }), name));
    if (spec.bars) swatch(spec.bars.cls, spec.bars.name);
    for (const line of spec.lines || []) swatch(line.cls, line.name);
    if (spec.band) swatch("band", spec.band.name);
    if ((spec.points || []).length) swatch("point", spec.pointName || "holdout evaluation");
    for (const t of spec.thresholds || []) if (finite(t.value)) swatch("threshold", t.name);
    return el("figure", { class: "chart-box", "data-chart": spec.id }, el("figcaption", {}, spec.title), root, legend);
  }

  function latest(values) {
    for (let i = values.length - 1; i >= 0; i--) if (finite(values[i])) return values[i];
    return null;
  }

  function showSeries(body) {
    const windows = body.series.windows || [];
    const s = body.settings || {};
    const ref = body.series.reference || {};
    const labels = windows.map((w) => w.label);
    const col = (key) => windows.map((w) => (finite(w[key]) ? w[key] : null));
    const evalPoints = [];
    windows.forEach((w, i) => {
      for (const e of w.evaluations || []) {
        const acc = e.metrics && e.metrics.accuracy;
        evalPoints.push({ i, value: acc, title: `holdout ${when(e.at)}: accuracy ${num(acc)}, macro F1 ${num(e.metrics && e.metrics.macro_f1)} (n=${e.n})` });
      }
    });
    const refAcc = finite(ref.accuracy) ? ref.accuracy : null;
    const volume = col("volume");
    const charts = [
      chart({
        id: "c-volume", title: "Volume", labels, format: (v) => String(Math.round(v)),
        summary: `Predictions per window; latest ${latest(volume) ?? "–"}.`,
        bars: { name: "predictions", values: volume, cls: "s1" },
        thresholds: [{ value: s.min_volume, name: `judged from ${s.min_volume} (monitor_min_volume)` }],
      }),
      chart({
        id: "c-psi", title: "Drift (PSI against the reference)", labels,
        summary: `PSI of labels ${num(latest(col("label_psi")))}, confidence ${num(latest(col("confidence_psi")))}, length ${num(latest(col("length_psi")))} in the latest window.`,
        lines: [
          { name: "predicted labels", values: col("label_psi"), cls: "s1" },
          { name: "confidence", values: col("confidence_psi"), cls: "s2" },
          { name: "text length", values: col("length_psi"), cls: "s3" },
        ],
        thresholds: [{ value: s.label_psi, name: "alert above (alert_label_psi)" }],
      }),
      chart({
        id: "c-embedding", title: "Embedding drift (domain classifier ROC AUC)", labels, min: 0.3, max: 1,
        summary: `ROC AUC ${num(latest(col("embedding_drift")))} in the latest window; 0.5 means no drift.`,
        lines: [
          { name: "ROC AUC", values: col("embedding_drift"), cls: "s1" },
          { name: "noise floor (99%)", values: col("embedding_noise"), cls: "s4" },
        ],
        thresholds: [{ value: s.embedding_drift, name: "alert above (alert_embedding_drift)" }],
      }),
      chart({
        id: "c-accuracy", title: "Accuracy", labels, min: 0, max: 1, format: (v) => pct(v),
        summary: `Reviewed accuracy ${latest(col("accuracy")) === null ? "–" : pct(latest(col("accuracy")))}, label-free estimate ${latest(col("estimated_accuracy")) === null ? "–" : pct(latest(col("estimated_accuracy")))} in the latest window; ${evalPoints.length} holdout evaluations.`,
        lines: [
          { name: "reviewed random slice", values: col("accuracy"), cls: "s1" },
          { name: "label-free estimate (CBPE)", values: col("estimated_accuracy"), cls: "s2" },
        ],
        band: { name: "95% interval (Wilson)", low: col("accuracy_low"), high: col("accuracy_high") },
        points: evalPoints,
        thresholds: refAcc === null ? [] : [{ value: refAcc - (s.accuracy_drop || 0), name: "alert below (reference − alert_accuracy_drop)" }],
      }),
    ];
    $("health-charts").replaceChildren(...charts);
    const last = body.last_check ? ` · last check ${when(body.last_check.at)}` : "";
    const refNote = body.reference
      ? `reference: ${ref.source || "holdout"} (n=${ref.n}${refAcc === null ? "" : ", accuracy " + pct(refAcc)})`
      : "no reference: set holdout_data to measure drift and the label-free estimate";
    $("health-meta").textContent = `${body.model_version} · per ${body.window} since ${when(body.since)} · ${refNote}${last}`;
    showAlerts(body.alerts || []);
  }

  function delivery(a) {
    if (a.delivered_at) return el("span", { class: "badge job-succeeded" }, "sent");
    if (a.delivery_error) return el("span", { class: "error", title: a.delivery_error }, `not sent (${a.delivery_attempts} tries)`);
    return el("span", { class: "meta" }, "–");
  }

  function showAlerts(alerts) {
    $("alerts-empty").hidden = alerts.length > 0;
    const rows = alerts.map((a) => {
      const button = el("button", { type: "button", class: "small secondary", "data-alert": a.id, onclick: () => resolve(a) }, "Resolve");
      button.setAttribute("aria-label", `Resolve alert ${a.id} (${a.rule})`);
      const tr = el("tr", { "data-key": String(a.id) });
      for (const v of [
        el("span", { class: "badge job-failed" }, a.rule.replaceAll("_", " ")),
        when(a.window_start),
        num(a.value),
        num(a.threshold),
        a.message,
        delivery(a),
        button,
      ]) tr.append(el("td", {}, v));
      return tr;
    });
    $("alerts").querySelector("tbody").replaceChildren(...rows);
  }

  async function resolve(alert) {
    try {
      await api("POST", `/v1/alerts/${alert.id}/resolve`, {});
      say(`Alert ${alert.id} (${alert.rule}) resolved.`, "ok");
    } catch (err) {
      say(err.message, "error");
    }
    refresh();
  }

  async function evaluate() {
    $("evaluate").disabled = true;
    try {
      const job = await api("POST", "/v1/monitor/evaluate");
      say(`Holdout evaluation job ${String(job.id).slice(0, 8)} queued; its point appears when it is done.`, "ok");
    } catch (err) {
      say(err.message, "error");
    }
    $("evaluate").disabled = false;
  }

  async function refresh() {
    clearTimeout(timer);
    if (!hrlm.token() || $("workspace").hidden) return;
    if (busy) { // a refresh is under way: run once more when it ends (the window was changed meanwhile)
      again = true;
      return;
    }
    busy = true;
    again = false;
    try {
      const win = $("health-window").value;
      const body = await api("GET", "/v1/monitor" + (win ? "?window=" + encodeURIComponent(win) : ""));
      if (hrlm.token() && !$("workspace").hidden) showSeries(body);
    } catch (err) {
      if (err.status !== 401) $("health-meta").textContent = "Health: " + err.message;
    } finally {
      busy = false;
    }
    if (hrlm.token()) timer = setTimeout(refresh, again ? 0 : REFRESH_MS);
  }

  function clear() {
    clearTimeout(timer);
    $("health-charts").replaceChildren();
    $("alerts").querySelector("tbody").replaceChildren();
    $("alerts-empty").hidden = true;
    $("health-meta").textContent = "–";
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.onSignOut(clear);
    $("evaluate").addEventListener("click", evaluate);
    $("health-window").addEventListener("change", refresh);
    // admin.js signs in; the section loads as soon as the workspace shows
    new MutationObserver(() => { if (!$("workspace").hidden) refresh(); })
      .observe($("workspace"), { attributes: true, attributeFilter: ["hidden"] });
    if (!$("workspace").hidden) refresh();
  });
})();
