// The admin page's Bias audit section: reads the chosen CSV or JSONL file in the browser, posts its text to
// POST /v1/audit with the group columns and the positive label, and shows one table per grouping (flagged rows
// marked), the small categories apart, and the counterfactual probe. It runs beside admin.js and empties itself
// on sign-out.
"use strict";

(() => {
  const { api, el, $, say, onSignOut } = hrlm;
  const MAX_BYTES = 900 * 1024; // the service refuses bodies over max_body_bytes (1 MiB by default)

  function num(x) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(3);
  }

  function readText(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(new Error("the file cannot be read"));
      reader.readAsText(file);
    });
  }

  function table(caption, rows, labelled) {
    const head = ["Category", "Count", "Share", "Selection rate", "Impact ratio", "Scoring rate", "Scoring IR"];
    if (labelled) head.push("Accuracy", "F1", "ECE");
    head.push("Flag");
    const body = rows.map((r) => {
      const cells = [r.category, r.count, num(r.share), num(r.selection_rate), num(r.impact_ratio),
        num(r.scoring_rate), num(r.scoring_impact_ratio)];
      if (labelled) cells.push(num(r.accuracy), num(r.f1), num(r.ece));
      const flag = r.flagged ? el("span", { class: "badge stage-rejected" }, "four-fifths")
        : r.impact_ratio === null ? el("span", { class: "badge stage-archived" }, "not compared") : "";
      return el("tr", { class: r.flagged ? "flagged" : null },
        ...cells.map((c, i) => el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, String(c))),
        el("td", {}, flag));
    });
    // a region that may scroll sideways: focusable, so that a keyboard can scroll it (WCAG 2.1.1)
    return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
      el("table", {},
        el("caption", { class: "sr-only" }, caption),
        el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...body)));
  }

  function show(audit) {
    const box = $("fa-results");
    box.replaceChildren();
    const verdict = audit.passed ? "passed" : "failed";
    $("fa-summary").textContent = `${audit.n} texts, ${audit.date}: the audit ${verdict} (minimum impact ratio ` +
      `${num(audit.min_impact_ratio)}, threshold ${audit.threshold}).`;
    if (audit.reasons.length) box.append(el("ul", { class: "notes" }, ...audit.reasons.map((r) => el("li", {}, r))));
    const labelled = audit.label_col !== null && audit.label_col !== undefined;
    for (const g of audit.groupings) {
      box.append(el("h3", {}, g.name));
      box.append(el("p", { class: "meta" }, `${g.unknown} of ${g.n} texts of unknown group; reference: ${g.reference || "–"}.`));
      box.append(table(`Rates and impact ratios by ${g.name}`, g.categories, labelled));
      if (g.small_categories.length) {
        box.append(el("p", { class: "meta" }, g.small_note));
        box.append(table(`Small categories of ${g.name}`, g.small_categories, labelled));
      }
    }
    const cf = audit.counterfactual;
    if (cf) {
      box.append(el("h3", {}, "Counterfactual probe"));
      box.append(el("p", { class: "meta" }, `${cf.flipped} of ${cf.swapped} texts with gendered words changed label when ` +
        `they were swapped (flip rate ${num(cf.flip_rate)}); mean change of P(${cf.positive}): ${num(cf.mean_positive_change)}.`));
    }
  }

  async function run(event) {
    event.preventDefault();
    const file = $("fa-file").files[0];
    const groups = $("fa-groups").value.split(",").map((s) => s.trim()).filter(Boolean);
    const positive = $("fa-positive").value.trim();
    const threshold = Number($("fa-threshold").value || "0.8");
    if (!file || !groups.length || !positive) {
      say("Choose a file, name the group columns and the positive label.", "error");
      return;
    }
    if (!(threshold > 0 && threshold <= 1)) {
      say("The minimum impact ratio must be above 0 and at most 1.", "error");
      return;
    }
    if (file.size > MAX_BYTES) {
      say("The file is over 900 KB; run `hrlm audit` on it instead.", "error");
      return;
    }
    const button = $("fa-run");
    button.disabled = true;
    $("fa-summary").textContent = "Auditing…";
    try {
      const text = await readText(file);
      const body = {
        source: $("fa-source").value,
        group_cols: groups,
        positive,
        min_impact_ratio: threshold,
        table: text,
        format: /\.jsonl$/i.test(file.name) ? "jsonl" : "csv",
        data_source: file.name,
      };
      show(await api("POST", "/v1/audit", body));
    } catch (err) {
      $("fa-summary").textContent = "–";
      say(err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  function clear() {
    $("fa-results").replaceChildren();
    $("fa-summary").textContent = "–";
    $("fairness-form").reset();
  }

  $("fairness-form").addEventListener("submit", run);
  onSignOut(clear);
})();
