// The audit-log page (admins): who changed what and when, filtered, a page at a time, exported as CSV;
// and the flagged review items with their notes. Everything comes from the token-checked API.
"use strict";

(() => {
  const { api, blob, el, $, say, when } = hrlm;
  const PAGE = 100;
  let next = null; // the id the next (older) page starts below
  let shown = 0;

  // The filter form as query parameters; a local date and time becomes an ISO instant.
  function params() {
    const q = new URLSearchParams();
    for (const [key, id] of [["actor", "f-actor"], ["action", "f-action"], ["model_version", "f-version"]]) {
      const value = $(id).value.trim();
      if (value) q.set(key, value);
    }
    for (const [key, id] of [["since", "f-since"], ["until", "f-until"]]) {
      const value = $(id).value;
      if (value) q.set(key, new Date(value).toISOString());
    }
    return q;
  }

  function detailText(detail) {
    if (!detail) return "";
    return Object.entries(detail)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join("; ");
  }

  function row(e) {
    return el("tr", { "data-key": e.id },
      el("td", {}, when(e.at)),
      el("td", {}, e.actor),
      el("td", {}, el("code", {}, e.action)),
      el("td", {}, e.target || "–"),
      el("td", {}, detailText(e.detail)),
    );
  }

  async function load(append) {
    const q = params();
    q.set("limit", String(PAGE));
    if (append && next !== null) q.set("before", String(next));
    try {
      const page = await api("GET", "/v1/audit-log?" + q.toString());
      if (!hrlm.token()) return;
      const body = $("entries").querySelector("tbody");
      const rows = page.entries.map(row);
      if (append) body.append(...rows);
      else body.replaceChildren(...rows);
      shown = (append ? shown : 0) + rows.length;
      next = page.next_before;
      $("more").hidden = next === null;
      $("entries-empty").hidden = shown > 0;
      $("entries-count").textContent = `${shown} entr${shown === 1 ? "y" : "ies"} shown` + (next === null ? "" : ", more below");
    } catch (err) {
      if (err.status === 403) throw err;
      say(`Audit log: ${err.message}`, "error");
    }
  }

  async function loadFlagged() {
    try {
      const stats = await api("GET", "/v1/review/stats");
      if (!hrlm.token()) return;
      const items = stats.flagged_items || [];
      $("flagged").querySelector("tbody").replaceChildren(
        ...(items.length
          ? items.map((f) =>
              el("tr", { "data-key": `${f.item_id}-${f.at}` },
                el("td", {}, el("code", {}, String(f.item_id))),
                el("td", {}, f.flagged_by),
                el("td", {}, when(f.at)),
                el("td", {}, f.note_purged ? el("span", { class: "meta" }, "removed by retention") : f.note || el("span", { class: "meta" }, "no note")),
                el("td", {}, f.suggestion),
                el("td", {}, el("code", {}, f.model_version)),
              ))
          : [el("tr", {}, el("td", { colspan: 6, class: "empty-note" }, "No item has been flagged."))]),
      );
    } catch (err) {
      say(`Flagged items: ${err.message}`, "error");
    }
  }

  async function exportCsv() {
    try {
      const data = await blob("/v1/audit-log.csv?" + params().toString());
      const url = URL.createObjectURL(data);
      const link = el("a", { href: url, download: `hrlm-audit-log-${new Date().toISOString().slice(0, 19).replaceAll(":", "")}.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      say("Exported the matching entries as CSV.", "ok");
    } catch (err) {
      say(`Export: ${err.message}`, "error");
    }
  }

  function clearAll() {
    next = null;
    shown = 0;
    for (const table of document.querySelectorAll("#workspace table tbody")) table.replaceChildren();
    $("entries-count").textContent = "";
    $("entries-empty").hidden = true;
    $("more").hidden = true;
    $("filters").reset();
  }

  async function check() {
    const me = await api("GET", "/v1/review/me");
    if (me.role !== "admin") {
      throw new Error(`This page needs an admin token; ${me.name} has role ${me.role}. The review page is at /ui/review.`);
    }
    setTimeout(async () => {
      try {
        await Promise.all([load(false), loadFlagged()]);
      } catch (err) {
        hrlm.signOut(err.message);
      }
    }, 0);
    return me;
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.setupSignIn(check);
    hrlm.onSignOut(clearAll);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      load(false);
    });
    $("clear").addEventListener("click", () => {
      $("filters").reset();
      load(false);
    });
    $("more").addEventListener("click", () => load(true));
    $("export").addEventListener("click", exportCsv);
  });
})();
