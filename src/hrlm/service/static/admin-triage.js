// The admin page's triage: disagreements settled with one click (POST /v1/review/items/{id}/adjudicate),
// and the newest flagged and skipped items with their notes, sent back to the queue with Reopen.
"use strict";

(() => {
  const { api, el, $, say, when } = hrlm;

  function snippet(text) {
    return text.length > 160 ? text.slice(0, 159) + "…" : text;
  }

  async function settle(id, label) {
    try {
      await api("POST", `/v1/review/items/${id}/adjudicate`, { label });
      say(`Item #${id} settled as “${label}”; retraining uses it.`, "ok");
      await refresh();
    } catch (err) {
      say(err.message, "error");
    }
  }

  async function reopen(id) {
    try {
      await api("POST", `/v1/review/items/${id}/reopen`, { reason: "reopened from triage" });
      say(`Item #${id} is back in the queue.`, "ok");
      await refresh();
    } catch (err) {
      say(err.message, "error");
    }
  }

  async function refresh() {
    if (!hrlm.token() || $("workspace").hidden) return;
    const triage = await api("GET", "/v1/review/triage");
    if (!hrlm.token()) return;
    $("disagreements").querySelector("tbody").replaceChildren(
      ...triage.disagreements.map((d) => {
        const given = [...new Set(d.answers.map((a) => a.label))];
        const buttons = d.labels
          .filter((label) => given.includes(label))
          .map((label) => el("button", { type: "button", class: "secondary", onclick: () => settle(d.item_id, label) }, label));
        return el(
          "tr",
          {},
          el("td", {}, "#" + d.item_id),
          el("td", { class: "snippet" }, snippet(d.text)),
          el("td", {}, d.answers.map((a) => `${a.reviewer}: ${a.label}`).join("; ")),
          el("td", { class: "links" }, ...buttons),
        );
      }),
    );
    $("disagreements-empty").hidden = triage.disagreements.length > 0;
    const rows = [
      ...triage.flagged.map((f) => ({ ...f, what: "flagged" })),
      ...triage.skipped.map((f) => ({ ...f, what: "skipped" })),
    ].sort((a, b) => (a.at < b.at ? 1 : -1));
    $("triage-items").querySelector("tbody").replaceChildren(
      ...rows.map((r) =>
        el(
          "tr",
          {},
          el("td", {}, "#" + r.item_id),
          el("td", {}, r.what),
          el("td", {}, r.flagged_by),
          el("td", {}, when(r.at)),
          el("td", {}, r.note_purged ? el("em", {}, "removed by retention") : r.note || "–"),
          el("td", {}, r.state),
          el("td", {}, r.state === "open" ? "" : el("button", { type: "button", class: "secondary", onclick: () => reopen(r.item_id) }, "Reopen")),
        ),
      ),
    );
    $("triage-items-empty").hidden = rows.length > 0;
  }

  function clear() {
    $("disagreements").querySelector("tbody").replaceChildren();
    $("triage-items").querySelector("tbody").replaceChildren();
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.onSignOut(clear);
    new MutationObserver(() => { if (!$("workspace").hidden) refresh().catch((err) => say(err.message, "error")); })
      .observe($("workspace"), { attributes: true, attributeFilter: ["hidden"] });
    setInterval(() => refresh().catch(() => {}), 15000);
  });
})();
