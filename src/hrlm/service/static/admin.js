// The admin's page: the review queue (with the flagged items and their notes), reviewer agreement, model
// versions (promote, roll back, reports, model cards) and retrain jobs. Everything comes from the
// token-checked API; the page refreshes itself.
"use strict";

(() => {
  const { api, blob, el, $, say, pct, when } = hrlm;
  const FAST_MS = 2000;
  const SLOW_MS = 10000;
  let timer = null;
  let activeJob = false;
  let objectUrl = null;

  function num(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits === undefined ? 3 : digits);
  }

  function cells(row, values) {
    for (const v of values) row.append(v instanceof Node ? el("td", {}, v) : el("td", {}, v === undefined ? "–" : v));
    return row;
  }

  // Replaces a table's rows; a control that had the keyboard focus in the old rows gets it back in the new
  // row with the same key (data-key, else the row's position), at the same position among its controls.
  const FOCUSABLE = "button, a[href], input, select, textarea, [tabindex]";
  function fillTable(id, rows) {
    const body = $(id).querySelector("tbody");
    const active = document.activeElement;
    let keep = null;
    if (active && body.contains(active)) {
      const row = active.closest("tr");
      const oldRows = [...body.rows];
      keep = {
        key: row.dataset.key || null,
        index: oldRows.indexOf(row),
        control: [...row.querySelectorAll(FOCUSABLE)].indexOf(active),
      };
    }
    body.replaceChildren(...rows);
    if (!keep) return;
    const row = keep.key === null ? body.rows[keep.index] : rows.find((r) => r.dataset.key === keep.key);
    const controls = row ? [...row.querySelectorAll(FOCUSABLE)] : [];
    const target = controls[Math.min(Math.max(keep.control, 0), controls.length - 1)];
    if (target) {
      target.focus({ preventScroll: true });
    } else {
      $(id).tabIndex = -1; // the control is gone (its row went away): the focus stays in the table
      $(id).focus({ preventScroll: true });
    }
  }

  // -- queue and agreement ----------------------------------------------------------------------

  function showStats(s) {
    $("t-open").textContent = s.open;
    $("t-leased").textContent = s.leased;
    $("t-done").textContent = s.done;
    $("t-flagged").textContent = s.flagged;
    const reasons = Object.entries(s.by_reason).sort(([a], [b]) => a.localeCompare(b));
    fillTable(
      "reasons",
      reasons.length
        ? reasons.map(([reason, n]) => cells(el("tr"), [reason.replace("_", " "), n.open, n.done, n.flagged]))
        : [el("tr", {}, el("td", { colspan: 4, class: "empty-note" }, "The queue is empty."))],
    );
    fillTable(
      "reviewers",
      s.reviewers.length
        ? s.reviewers.map((r) => cells(el("tr"), [r.reviewer, r.accept, r.correct, r.skip, r.flag]))
        : [el("tr", {}, el("td", { colspan: 5, class: "empty-note" }, "No answers yet."))],
    );
    const notes = [...s.notes];
    if (s.fill) notes.push(`${s.fill.scanned} predictions read so far, ${s.fill.queued} queued, ${s.fill.skipped_duplicate} near-duplicates skipped.`);
    $("notes").replaceChildren(...notes.map((n) => el("li", {}, n)));
    showFlagged(s.flagged_items || []);
  }

  // The newest flagged items with who flagged them and their note, under the queue's notes.
  function showFlagged(items) {
    let box = $("flagged-items");
    if (!box) {
      box = el("div", { id: "flagged-items" });
      $("notes").after(box);
    }
    if (!items.length) {
      box.replaceChildren();
      return;
    }
    const list = el("ul", { class: "notes" });
    for (const f of items) {
      const note = f.note_purged ? "note removed by retention" : f.note ? `“${f.note}”` : "no note";
      list.append(el("li", {}, el("code", {}, `#${f.item_id}`), ` flagged by ${f.flagged_by}, ${when(f.at)}: ${note}`));
    }
    box.replaceChildren(
      el("h3", {}, "Flagged items"),
      list,
      el("p", { class: "meta" }, el("a", { href: "/ui/audit-log" }, "All flags and the audit log")),
    );
  }

  function showAgreement(a) {
    $("t-kappa").textContent = a.kappa === null ? "–" : num(a.kappa, 2);
    $("a-items").textContent = a.items;
    $("a-share").textContent = a.agreement === null ? "–" : pct(a.agreement);
    $("a-kappa").textContent = a.kappa === null ? (a.items ? "undefined (one label only)" : "–") : num(a.kappa, 3);
    fillTable(
      "pairs",
      a.pairs.length
        ? a.pairs.map((p) =>
            cells(el("tr"), [p.reviewers.join(" & "), p.items, p.agreement === null ? "–" : pct(p.agreement), p.kappa === null ? "–" : num(p.kappa, 3)]),
          )
        : [el("tr", {}, el("td", { colspan: 4, class: "empty-note" }, "No item has two answers yet."))],
    );
  }

  // -- models -----------------------------------------------------------------------------------

  function macroF1(m) {
    const metrics = m.metrics || {};
    for (const key of ["macro_f1", "f1_macro", "val_macro_f1", "test_macro_f1"]) if (key in metrics) return num(metrics[key]);
    return "–";
  }

  function showModels(data) {
    $("serving").textContent = data.serving || "–";
    fillTable(
      "models",
      data.models.map((m) => {
        const stage = m.stage || "–";
        const reports = el("span", { class: "links" },
          el("button", { type: "button", class: "link", onclick: () => openReports(m.version) }, "Reports"),
          el("button", { type: "button", class: "link", onclick: () => openCard(m.version) }, "Model card"),
          el("button", { type: "button", class: "link", onclick: () => openHistory(m.version) }, "History"),
        );
        const actions = el("div", { class: "links" });
        if (["candidate", "archived"].includes(m.stage)) {
          actions.append(
            el("button", { type: "button", class: "secondary small", onclick: () => promote(m.version) }, "Promote"),
          );
        }
        const name = el("span", {}, el("code", {}, m.version), m.serving ? el("span", { class: "tag" }, "serving") : null);
        return cells(el("tr", { "data-key": m.version }), [name, el("span", { class: "badge stage-" + stage }, stage), macroF1(m), reports, actions]);
      }),
    );
  }

  // The version's report files (GET /v1/models/{version}/report), then one of them (a gate report first).
  async function openReports(version) {
    const box = $("report-body");
    $("report").hidden = false;
    $("report-title").textContent = `Reports · ${version}`;
    box.replaceChildren(el("p", { class: "meta" }, "Loading…"));
    try {
      const { reports } = await api("GET", `/v1/models/${encodeURIComponent(version)}/report`);
      if (!reports.length) {
        box.replaceChildren(el("p", { class: "empty-note" }, "This version has no report files."));
        return;
      }
      const list = el("nav", { class: "links report-files", "aria-label": "Report files" });
      for (const name of reports) {
        list.append(el("button", { type: "button", class: "link", onclick: () => openReport(version, name, list) }, name));
      }
      box.replaceChildren(list);
      const first = ["gate.md", "metrics.json", "report.txt"].find((n) => reports.includes(n)) || reports[0];
      await openReport(version, first, list, true);
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }

  async function openReport(version, name, list, focusTitle) {
    const path = `/v1/models/${encodeURIComponent(version)}/report/${name.split("/").map(encodeURIComponent).join("/")}`;
    const box = $("report-body");
    $("report-title").textContent = `${name} · ${version}`;
    for (const b of list.querySelectorAll("button")) b.setAttribute("aria-current", String(b.textContent === name));
    const view = el("div", { class: "report-view" }, el("p", { class: "meta" }, "Loading…"));
    box.replaceChildren(list, view);
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    try {
      const data = await blob(path);
      if (/\.(png|jpe?g|svg)$/i.test(name)) {
        objectUrl = URL.createObjectURL(data);
        view.replaceChildren(el("img", { src: objectUrl, alt: `${name} of ${version}` }));
      } else if (/\.html?$/i.test(name)) {
        objectUrl = URL.createObjectURL(data);
        view.replaceChildren(el("a", { href: objectUrl, download: `${version}-${name.replaceAll("/", "-")}` }, `Download ${name}`));
      } else {
        view.replaceChildren(el("pre", { class: "report-text" }, await data.text()));
      }
      if (focusTitle) $("report-title").focus();
    } catch (err) {
      view.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }

  // -- model cards: Markdown rendered with textContent only (headings, tables, lists, paragraphs, code) --

  function inline(text) {
    const out = [];
    text.split(/(`[^`]*`)/).forEach((part) => {
      if (part.length > 1 && part.startsWith("`") && part.endsWith("`")) out.push(el("code", {}, part.slice(1, -1)));
      else if (part) out.push(part.replace(/\\([\\|`*_])/g, "$1"));
    });
    return out;
  }

  function tableCells(line) {
    const cells = [];
    let cell = "";
    const body = line.trim().replace(/^\|/, "").replace(/\|$/, "");
    for (let i = 0; i < body.length; i++) {
      if (body[i] === "\\" && i + 1 < body.length) {
        cell += body[i] + body[i + 1];
        i++;
      } else if (body[i] === "|") {
        cells.push(cell.trim());
        cell = "";
      } else {
        cell += body[i];
      }
    }
    cells.push(cell.trim());
    return cells;
  }

  function renderMarkdown(text) {
    const root = el("div", { class: "card-md" });
    let lines = text.replace(/\r\n/g, "\n").split("\n");
    if (lines[0] === "---") {
      const end = lines.indexOf("---", 1);
      if (end > 0) {
        root.append(el("details", {}, el("summary", {}, "Metadata (YAML)"), el("pre", {}, lines.slice(1, end).join("\n"))));
        lines = lines.slice(end + 1);
      }
    }
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (!line.trim()) {
        i++;
      } else if (heading) {
        const level = Math.min(heading[1].length + 2, 6); // the card's h1 sits under the panel's h3
        root.append(el("h" + level, {}, ...inline(heading[2])));
        i++;
      } else if (line.trim().startsWith("|")) {
        const rows = [];
        while (i < lines.length && lines[i].trim().startsWith("|")) rows.push(lines[i++]);
        const table = el("table");
        const head = tableCells(rows[0]);
        table.append(el("thead", {}, el("tr", {}, ...head.map((c) => el("th", { scope: "col" }, ...inline(c))))));
        const body = el("tbody");
        for (const r of rows.slice(1)) {
          if (/^\|?\s*:?-{3,}/.test(r.trim())) continue; // the rule under the head
          body.append(el("tr", {}, ...tableCells(r).map((c) => el("td", {}, ...inline(c)))));
        }
        table.append(body);
        root.append(el("div", { class: "table-wrap" }, table));
      } else if (/^\s*[-*]\s+/.test(line)) {
        const list = el("ul");
        while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) list.append(el("li", {}, ...inline(lines[i++].replace(/^\s*[-*]\s+/, ""))));
        root.append(list);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*[-*]\s|\s*\|)/.test(lines[i])) para.push(lines[i++].trim());
        root.append(el("p", {}, ...inline(para.join(" "))));
      }
    }
    return root;
  }

  // The version's model card (GET /v1/models/{version}/card) in the report panel.
  async function openCard(version) {
    const box = $("report-body");
    $("report").hidden = false;
    $("report-title").textContent = `Model card · ${version}`;
    box.replaceChildren(el("p", { class: "meta" }, "Loading…"));
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    try {
      const text = await (await blob(`/v1/models/${encodeURIComponent(version)}/card`)).text();
      box.replaceChildren(renderMarkdown(text));
      $("report-title").focus();
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }

  // Where a version came from and every stage it went through (GET /v1/models/{version}/history).
  async function openHistory(version) {
    const box = $("report-body");
    $("report").hidden = false;
    $("report-title").textContent = `History · ${version}`;
    box.replaceChildren(el("p", { class: "meta" }, "Loading…"));
    try {
      const h = await api("GET", `/v1/models/${encodeURIComponent(version)}/history`);
      const origin = h.origin === "retrain" && h.parent ? `retrained from ${h.parent}` : `registered (${h.origin})`;
      const head = el("tr", {}, ...["When", "Move", "From", "To", "By", "Why"].map((c) => el("th", { scope: "col" }, c)));
      const rows = h.events.map((e) =>
        el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.action), el("td", {}, e.from_stage || "–"),
          el("td", {}, e.to_stage), el("td", {}, e.actor), el("td", {}, e.reason || "")),
      );
      box.replaceChildren(
        el("p", {}, `${origin}, created ${when(h.created_at)}; now ${h.stage}.` + (h.note ? ` Note: ${h.note}` : "")),
        el("div", { class: "table-wrap", tabindex: "0", "aria-label": "Stage history" },
          el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))),
      );
      $("report-title").focus();
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }

  function confirmAction(title, text) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-reason").focus();
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => resolve(dialog.returnValue === "ok" ? $("confirm-reason").value.trim() || null : undefined),
        { once: true },
      );
    });
  }

  async function promote(version) {
    const reason = await confirmAction("Promote " + version, "It replaces the production version; the service switches within seconds.");
    if (reason === undefined) return;
    try {
      const out = await api("POST", `/v1/models/${encodeURIComponent(version)}/promote`, reason ? { reason } : {});
      say(`Promoted ${version}.` + (out.warning ? " " + out.warning : ""), out.warning ? "error" : "ok");
    } catch (err) {
      say(err.message, "error");
    }
    refresh();
  }

  async function rollback() {
    const reason = await confirmAction("Roll back production", "Production goes back to the version that was in production before it.");
    if (reason === undefined) return;
    try {
      const out = await api("POST", "/v1/models/rollback", reason ? { reason } : {});
      say(`Rolled back to ${out.version}.` + (out.warning ? " " + out.warning : ""), out.warning ? "error" : "ok");
    } catch (err) {
      say(err.message, "error");
    }
    refresh();
  }

  // -- jobs -------------------------------------------------------------------------------------

  function jobResult(job) {
    if (job.state === "failed") return el("span", { class: "error" }, job.error || "failed");
    const r = job.result;
    if (!r) return el("span", { class: "meta" }, job.message || "–");
    const out = el("div", { class: "result" });
    if (r.decision) out.append(el("span", { class: "badge decision-" + r.decision }, r.decision), " ");
    if (r.candidate) out.append(el("code", {}, r.candidate));
    const fixed = r.gate && r.gate.fixed_holdout;
    if (fixed && fixed.candidate !== undefined) {
      const sign = fixed.delta >= 0 ? "+" : "";
      out.append(el("div", { class: "meta" }, `macro F1 ${num(fixed.candidate)} vs production ${num(fixed.production)} (${sign}${num(fixed.delta)})`));
    }
    if (r.gate && r.gate.reason) out.append(el("div", { class: "meta" }, r.gate.reason));
    return out;
  }

  function showJobs(data) {
    // the Retraining section shows retrain jobs (the Health section has the holdout evaluations)
    const jobs = (Array.isArray(data) ? data : data.jobs || []).filter((j) => !j.kind || j.kind === "retrain");
    activeJob = jobs.some((j) => j.state === "queued" || j.state === "running");
    $("retrain").disabled = activeJob;
    $("jobs-empty").hidden = jobs.length > 0;
    fillTable(
      "jobs",
      jobs.map((j) => {
        const p = Math.max(0, Math.min(1, Number(j.progress) || 0));
        const bar = el("div", { class: "progress" },
          el("div", { class: "meter", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(100 * p), "aria-label": "progress of job " + j.id }, el("span")),
          el("span", { class: "meta" }, j.state === "running" ? `${pct(p)} · ${j.message || ""}` : pct(p)),
        );
        bar.querySelector(".meter span").style.width = (100 * p).toFixed(1) + "%";
        const row = el("tr", { "data-job": j.id, "data-key": j.id, "data-state": j.state });
        return cells(row, [
          el("code", { title: j.id }, String(j.id).slice(0, 8)),
          el("span", { class: "badge job-" + j.state }, j.state),
          bar,
          j.actor || "–",
          when(j.created_at),
          jobResult(j),
        ]);
      }),
    );
  }

  async function retrain() {
    $("retrain").disabled = true;
    try {
      const out = await api("POST", "/v1/retrain", {});
      const id = out.id || out.job_id || (out.job && out.job.id) || "";
      say(`Retrain job ${String(id).slice(0, 8)} queued.`, "ok");
    } catch (err) {
      say(err.message, "error");
    }
    refresh();
  }

  async function fill() {
    try {
      const r = await api("POST", "/v1/review/fill");
      say(`Read ${r.scanned} predictions, queued ${r.queued}.`, "ok");
    } catch (err) {
      say(err.message, "error");
    }
    refresh();
  }

  // -- refreshing -------------------------------------------------------------------------------

  async function load(path, show, label) {
    try {
      const data = await api("GET", path);
      if (hrlm.token()) show(data); // signed out meanwhile: show nothing
    } catch (err) {
      if (err.status === 403) throw err;
      say(`${label}: ${err.message}`, "error");
    }
  }

  async function refresh() {
    clearTimeout(timer);
    if (!hrlm.token()) return;
    try {
      await Promise.all([
        load("/v1/review/stats", showStats, "Queue"),
        load("/v1/review/agreement", showAgreement, "Agreement"),
        load("/v1/models", showModels, "Models"),
        load("/v1/jobs", showJobs, "Jobs"),
      ]);
      if (!hrlm.token()) return;
      $("updated").textContent = new Date().toLocaleTimeString();
    } catch (err) {
      hrlm.signOut(err.message);
      return;
    }
    timer = setTimeout(refresh, activeJob ? FAST_MS : SLOW_MS);
  }

  // Sign-out empties every table, tile, note and report instead of only hiding them.
  function clearAll() {
    clearTimeout(timer);
    activeJob = false;
    for (const table of document.querySelectorAll("#workspace table tbody")) table.replaceChildren();
    for (const id of ["t-open", "t-leased", "t-done", "t-flagged", "t-kappa", "a-items", "a-share", "a-kappa", "serving", "updated"]) {
      $(id).textContent = "–";
    }
    $("notes").replaceChildren();
    if ($("flagged-items")) $("flagged-items").replaceChildren();
    $("report-body").replaceChildren();
    $("report-title").textContent = "Report";
    $("report").hidden = true;
    $("jobs-empty").hidden = true;
    $("retrain").disabled = false;
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
  }

  async function check() {
    const me = await api("GET", "/v1/review/me");
    if (me.role !== "admin") {
      throw new Error(`This page needs an admin token; ${me.name} has role ${me.role}. The review page is at /ui/review.`);
    }
    setTimeout(refresh, 0);
    return me;
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.setupSignIn(check);
    hrlm.onSignOut(clearAll);
    $("retrain").addEventListener("click", retrain);
    $("rollback").addEventListener("click", rollback);
    $("fill").addEventListener("click", fill);
    $("report-close").addEventListener("click", () => {
      $("report").hidden = true;
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = null;
    });
  });
})();
