// Finding review items: GET /v1/review/items (filters, full-text search, pages newest first), and one item
// whole in a dialog: GET /v1/review/items/{id}, its evidence (evidence.js), its answers; admins may reopen it.
"use strict";

(() => {
  const { api, el, $, say, pct, when } = hrlm;
  let next = null; // the id the next page starts below
  let me = null;
  let openId = null;

  function params() {
    const form = new FormData($("filters"));
    const query = new URLSearchParams();
    for (const [key, value] of form.entries()) {
      const v = String(value).trim();
      if (!v) continue;
      query.set(key, key === "since" || key === "until" ? v + "T00:00:00Z" : v);
    }
    return query;
  }

  function answersText(answers) {
    return answers.length ? answers.map((a) => `${a.reviewer}: ${a.label || a.action}`).join("; ") : "–";
  }

  function row(item) {
    const open = el("button", { type: "button", class: "link", onclick: () => show(item.id) }, "#" + item.id);
    const text = item.purged ? el("em", {}, "text removed by retention") : item.text;
    return el(
      "tr",
      {},
      el("td", {}, open),
      el("td", { class: "snippet" }, text),
      el("td", {}, item.state),
      el("td", {}, item.suggestion),
      el("td", {}, item.confidence === null ? "–" : pct(item.confidence)),
      el("td", {}, answersText(item.answers)),
      el("td", {}, when(item.created_at)),
    );
  }

  async function load(append) {
    const query = params();
    query.set("limit", "50");
    if (append && next !== null) query.set("before", String(next));
    const page = await api("GET", "/v1/review/items?" + query.toString());
    if (!hrlm.token()) return;
    const body = $("found").querySelector("tbody");
    if (!append) body.replaceChildren();
    body.append(...page.items.map(row));
    next = page.next_before;
    $("more").hidden = next === null;
    $("found-empty").hidden = page.total > 0;
    $("found-count").textContent = `${page.total} item${page.total === 1 ? "" : "s"}`;
  }

  async function show(id) {
    const item = await api("GET", `/v1/review/items/${id}`);
    openId = id;
    $("d-id").textContent = "#" + item.id;
    $("d-meta").textContent = `${item.state} · queued ${when(item.created_at)} because ${item.reason.replace("_", " ")} · model ${item.model_version}${item.holdout ? " · holdout" : ""}`;
    $("d-text").textContent = item.purged ? "(text removed by retention)" : item.text;
    $("d-suggestion").textContent = item.suggestion;
    $("d-confidence").textContent = item.confidence === null ? "" : `(${pct(item.confidence)} confident)`;
    const body = $("d-answers").querySelector("tbody");
    body.replaceChildren(
      ...item.answers.map((a) =>
        el(
          "tr",
          { class: a.withdrawn_at ? "withdrawn" : "" },
          el("td", {}, a.reviewer),
          el("td", {}, when(a.at)),
          el("td", {}, a.action),
          el("td", {}, a.label || "–"),
          el("td", {}, a.note || ""),
          el("td", {}, a.withdrawn_at ? `withdrawn by ${a.withdrawn_by}` : "counts"),
        ),
      ),
    );
    $("d-reopen").hidden = !(me && me.role === "admin" && item.state !== "open" && !item.purged);
    $("item-dialog").showModal();
    $("d-close").focus();
    if (!item.purged) hrlmEvidence.show(item.id, String(item.suggestion).split("|")[0]);
    else hrlmEvidence.clear();
  }

  async function reopen() {
    if (openId === null) return;
    try {
      await api("POST", `/v1/review/items/${openId}/reopen`, { reason: "reopened from Find items" });
      say(`Item #${openId} is back in the queue; its answers were withdrawn.`, "ok");
      $("item-dialog").close();
      await load(false);
    } catch (err) {
      say(err.message, "error");
    }
  }

  function clearAll() {
    next = null;
    me = null;
    openId = null;
    $("found").querySelector("tbody").replaceChildren();
    $("d-answers").querySelector("tbody").replaceChildren();
    for (const id of ["found-count", "d-id", "d-meta", "d-text", "d-suggestion", "d-confidence"]) $(id).textContent = "";
    $("found-empty").hidden = true;
    $("more").hidden = true;
  }

  async function check() {
    me = await api("GET", "/v1/review/me");
    await load(false);
    return me;
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.setupSignIn(check);
    hrlm.onSignOut(clearAll);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      load(false).catch((err) => say(err.message, "error"));
    });
    $("clear").addEventListener("click", () => {
      $("filters").reset();
      load(false).catch((err) => say(err.message, "error"));
    });
    $("more").addEventListener("click", () => load(true).catch((err) => say(err.message, "error")));
    $("d-close").addEventListener("click", () => $("item-dialog").close());
    $("d-reopen").addEventListener("click", reopen);
    $("item-dialog").addEventListener("close", () => {
      openId = null;
      hrlmEvidence.clear();
    });
  });
})();
