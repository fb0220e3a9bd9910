// The admin page's comparison of two model versions on the fixed holdout:
// GET /v1/models/{a}/compare/{b}: metrics, per-class F1, both confusion matrices, the texts they label differently.
"use strict";

(() => {
  const { api, el, $, say } = hrlm;

  function fmt(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
  }

  function signed(x, digits) {
    return x === null || x === undefined ? "–" : (x >= 0 ? "+" : "") + Number(x).toFixed(digits);
  }

  async function fillVersions() {
    if (!hrlm.token() || $("workspace").hidden) return;
    const models = (await api("GET", "/v1/models")).models;
    for (const id of ["compare-a", "compare-b"]) {
      const select = $(id);
      const keep = select.value;
      select.replaceChildren(...models.map((m) => el("option", { value: m.version }, `${m.version} (${m.stage || "-"})`)));
      if (keep && models.some((m) => m.version === keep)) select.value = keep;
    }
    if (models.length > 1 && $("compare-a").value === $("compare-b").value) $("compare-b").selectedIndex = 1;
  }

  function matrix(title, cm) {
    const head = el("tr", {}, el("th", { scope: "col" }, "true \\ predicted"), ...cm.labels.map((l) => el("th", { scope: "col" }, l)));
    const rows = cm.matrix.map((row, i) => el("tr", {}, el("th", { scope: "row" }, cm.labels[i]), ...row.map((n) => el("td", {}, String(n)))));
    return el("div", { class: "table-wrap", tabindex: "0", "aria-label": title }, el("table", {}, el("caption", {}, title), el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  async function compare(event) {
    event.preventDefault();
    const a = $("compare-a").value;
    const b = $("compare-b").value;
    if (!a || !b || a === b) {
      say("Choose two different versions to compare.", "error");
      return;
    }
    $("comparison-meta").textContent = "Measuring both on the holdout…";
    $("comparison").hidden = false;
    try {
      const out = await api("GET", `/v1/models/${encodeURIComponent(a)}/compare/${encodeURIComponent(b)}`);
      $("comparison-meta").textContent =
        `a = ${a}, b = ${b}, on ${out.holdout} (${out.n} texts): they disagree on ${out.disagreements_total}; ` +
        `a is right on ${out.a_right} of them, b on ${out.b_right}.`;
      $("comparison-metrics").querySelector("thead").replaceChildren(
        el("tr", {}, el("th", { scope: "col" }, ""), el("th", { scope: "col" }, "a"), el("th", { scope: "col" }, "b"), el("th", { scope: "col" }, "b − a")),
      );
      const rows = ["accuracy", "macro_f1", "weighted_f1"].map((k) =>
        el("tr", {}, el("th", { scope: "row" }, k.replace("_", " ")), el("td", {}, fmt(out.a.metrics[k], 4)), el("td", {}, fmt(out.b.metrics[k], 4)), el("td", {}, signed(out.delta[k], 4))),
      );
      for (const [label, row] of Object.entries(out.per_class)) {
        rows.push(el("tr", {}, el("th", { scope: "row" }, `F1 ${label} (${row.support})`), el("td", {}, fmt(row.a, 3)), el("td", {}, fmt(row.b, 3)), el("td", {}, signed(row.delta, 3))));
      }
      $("comparison-metrics").querySelector("tbody").replaceChildren(...rows);
      $("comparison-matrices").replaceChildren(matrix(`Confusion matrix of a`, out.a.confusion_matrix), matrix(`Confusion matrix of b`, out.b.confusion_matrix));
      $("comparison-texts").querySelector("tbody").replaceChildren(
        ...out.disagreements.map((d) =>
          el("tr", {}, el("td", { class: "snippet" }, d.text), el("td", {}, d.label),
            el("td", { class: d.right === "a" ? "right" : "" }, `${d.a} (${fmt(d.a_confidence, 2)})`),
            el("td", { class: d.right === "b" ? "right" : "" }, `${d.b} (${fmt(d.b_confidence, 2)})`)),
        ),
      );
      $("comparison-title").focus();
    } catch (err) {
      $("comparison-meta").textContent = "";
      $("comparison").hidden = true;
      say(err.message, "error");
    }
  }

  function clear() {
    for (const id of ["compare-a", "compare-b", "comparison-matrices"]) $(id).replaceChildren();
    for (const id of ["comparison-metrics", "comparison-texts"]) {
      $(id).querySelector("tbody").replaceChildren();
    }
    $("comparison-meta").textContent = "";
    $("comparison").hidden = true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.onSignOut(clear);
    $("compare-form").addEventListener("submit", compare);
    $("comparison-close").addEventListener("click", () => { $("comparison").hidden = true; });
    new MutationObserver(() => { if (!$("workspace").hidden) fillVersions().catch((err) => say(err.message, "error")); })
      .observe($("workspace"), { attributes: true, attributeFilter: ["hidden"] });
    setInterval(() => fillVersions().catch(() => {}), 30000);
  });
})();
