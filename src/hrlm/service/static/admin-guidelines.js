// The admin page's label guidelines: the served model's labels with the newest guideline of each
// (GET /v1/review/guidelines), edited in a dialog; each save is a new version (PUT /v1/review/guidelines/{label}).
"use strict";

(() => {
  const { api, el, $, say, when } = hrlm;
  let labels = [];
  let guidelines = {};
  let editing = null;

  async function refresh() {
    if (!hrlm.token() || $("workspace").hidden) return;
    const models = await api("GET", "/v1/models");
    const serving = models.models.find((m) => m.version === models.serving);
    labels = serving && serving.tasks.length ? serving.tasks[0].labels : [];
    guidelines = (await api("GET", "/v1/review/guidelines")).guidelines;
    const body = $("guidelines").querySelector("tbody");
    body.replaceChildren(
      ...labels.map((label) => {
        const g = guidelines[label];
        const edit = el("button", { type: "button", class: "secondary", onclick: () => open(label) }, g ? "Edit" : "Write");
        edit.setAttribute("aria-label", `${g ? "Edit" : "Write"} the guideline of ${label}`);
        return el(
          "tr",
          {},
          el("th", { scope: "row" }, label),
          el("td", {}, g ? g.description : el("em", {}, "none yet")),
          el("td", {}, g ? `v${g.version}, ${g.created_by}, ${when(g.created_at)}` : "–"),
          el("td", {}, edit),
        );
      }),
    );
  }

  function open(label) {
    const g = guidelines[label];
    editing = label;
    $("g-label").textContent = label;
    $("g-description").value = g ? g.description : "";
    $("g-examples").value = g ? g.examples.join("\n") : "";
    $("g-version").textContent = g ? `Now version ${g.version}; saving writes version ${g.version + 1}.` : "The first version.";
    $("guideline-dialog").showModal();
    $("g-description").focus();
  }

  async function save() {
    const label = editing;
    const description = $("g-description").value.trim();
    if (!label) return;
    if (!description) {
      say("Say what the label means before saving.", "error");
      return;
    }
    const examples = $("g-examples").value.split("\n").map((x) => x.trim()).filter(Boolean);
    try {
      const saved = await api("PUT", `/v1/review/guidelines/${encodeURIComponent(label)}`, { description, examples });
      say(`Saved version ${saved.version} of the guideline of ${label}.`, "ok");
      await refresh();
    } catch (err) {
      say(err.message, "error");
    }
  }

  function clear() {
    labels = [];
    guidelines = {};
    editing = null;
    $("guidelines").querySelector("tbody").replaceChildren();
    $("g-description").value = "";
    $("g-examples").value = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    hrlm.onSignOut(clear);
    const dialog = $("guideline-dialog");
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save") save();
      dialog.returnValue = "";
    });
    new MutationObserver(() => { if (!$("workspace").hidden) refresh().catch((err) => say(err.message, "error")); })
      .observe($("workspace"), { attributes: true, attributeFilter: ["hidden"] });
    if (!$("workspace").hidden) refresh().catch((err) => say(err.message, "error"));
  });
})();
