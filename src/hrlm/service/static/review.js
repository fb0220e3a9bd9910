// The reviewer's page: one item at a time from GET /v1/review/next, answered with POST /v1/review/items/{id}.
// Keyboard first: 1-9 choose a label, Enter saves, A accepts, S skips, F flags, Esc resets, R checks again.
"use strict";

(() => {
  const { api, el, $, say, pct } = hrlm;
  const SESSION_KEY = "hrlm.review.session";
  const ACTIONS = ["accept", "correct", "skip", "flag"];
  const POLL_MS = 5000; // an empty queue is checked again this often
  let item = null;
  let answeredLast = null; // {id, action} of this session's latest answer, which U takes back
  let guidelines = {}; // label -> {description, examples, version}: GET /v1/review/guidelines
  let alike = []; // open items alike to the one shown: GET /v1/review/items/{id}/similar
  let busy = false;
  let pollTimer = null;

  // -- session progress -------------------------------------------------------------------------

  function loadCounts() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "{}");
      return Object.fromEntries(ACTIONS.map((a) => [a, Number(saved[a]) || 0]));
    } catch (err) {
      return Object.fromEntries(ACTIONS.map((a) => [a, 0]));
    }
  }
  let counts = loadCounts();
  let left = null;

  function showCounts() {
    const total = ACTIONS.reduce((n, a) => n + counts[a], 0);
    $("n-total").textContent = total;
    for (const a of ACTIONS) $("n-" + a).textContent = counts[a];
    $("n-left").textContent = left === null ? "–" : left;
    const share = left === null || total + left === 0 ? 0 : total / (total + left);
    $("progress-bar").style.width = (100 * share).toFixed(1) + "%";
  }

  // Sign-out empties the item (its text may carry personal data) instead of only hiding it.
  hrlm.onSignOut(() => {
    clearTimeout(pollTimer);
    sessionStorage.removeItem(SESSION_KEY);
    counts = loadCounts();
    left = null;
    item = null;
    answeredLast = null;
    alike = [];
    $("bulk-items").replaceChildren();
    $("bulk-count").textContent = "";
    $("bulk").hidden = true;
    guidelines = {};
    showGuide(null);
    $("guide-all").replaceChildren();
    showUndo();
    showCounts();
    for (const id of ["item-id", "item-reason", "item-meta", "item-text", "item-suggestion", "item-confidence", "labels-help"]) {
      $(id).textContent = "";
    }
    $("item-reason").className = "badge";
    $("labels-legend").textContent = "Label";
    $("choices").replaceChildren();
    $("flag-note").value = "";
    $("item").hidden = true;
    $("empty").hidden = true;
  });

  // -- showing an item --------------------------------------------------------------------------

  function suggestionList() {
    if (!item) return [];
    return Array.isArray(item.suggestion) ? item.suggestion : [item.suggestion];
  }

  function selected() {
    return [...document.querySelectorAll("#choices input:checked")].map((input) => input.value);
  }

  function sameAsSuggestion() {
    const chosen = selected();
    const suggested = suggestionList();
    return chosen.length === suggested.length && chosen.every((label) => suggested.includes(label));
  }

  function refreshChoice() {
    for (const row of document.querySelectorAll("#choices .choice")) {
      row.classList.toggle("chosen", row.querySelector("input").checked);
    }
    const accept = sameAsSuggestion();
    $("submit-text").textContent = accept ? "Accept suggestion" : "Save correction";
    $("submit").classList.toggle("correcting", !accept);
    // the evidence for the label the reviewer is about to give (the suggestion until they choose another),
    // and what that label means
    const chosen = selected();
    if (item && chosen.length) hrlmEvidence.show(item.id, chosen[chosen.length - 1]);
    showGuide(chosen.length ? chosen[chosen.length - 1] : null);
  }

  function render(data) {
    left = data.open_items;
    item = data.item;
    showCounts();
    const wasEmpty = !$("empty").hidden;
    $("item").hidden = !item;
    $("empty").hidden = !!item;
    clearTimeout(pollTimer);
    if (!item) {
      hrlmEvidence.clear();
      if (!wasEmpty) focusSoon($("refresh"));
      pollTimer = setTimeout(() => {
        if (hrlm.token() && !$("workspace").hidden) loadNext().catch((err) => say(err.message, "error"));
      }, POLL_MS);
      return;
    }
    $("item-id").textContent = "#" + item.id;
    $("item-reason").textContent = item.reason.replace("_", " ");
    $("item-reason").className = "badge reason-" + item.reason;
    const second = item.reviews_needed > 1 ? ` · review ${item.reviews_done + 1} of ${item.reviews_needed}` : "";
    $("item-meta").textContent = "model " + item.model_version + second;
    $("item-text").textContent = item.text;
    $("item-suggestion").textContent = suggestionList().join(", ") || "no label";
    $("item-confidence").textContent = pct(item.confidence);
    $("labels-legend").textContent = item.multi_label ? "Labels (choose every one that applies)" : "Label";
    $("labels-help").textContent = item.multi_label
      ? "Press a number to switch a label on or off, then Enter."
      : "Press a number to choose another label, then Enter.";
    const choices = $("choices");
    choices.replaceChildren();
    const suggested = suggestionList();
    item.labels.forEach((label, i) => {
      const p = item.probabilities[label] || 0;
      const id = "choice-" + i;
      const input = el("input", {
        type: item.multi_label ? "checkbox" : "radio",
        name: "label",
        value: label,
        id,
        "aria-describedby": id + "-p",
      });
      input.checked = suggested.includes(label);
      input.addEventListener("change", refreshChoice);
      const fill = el("span", { class: "fill" });
      fill.style.width = (100 * p).toFixed(1) + "%";
      const row = el(
        "label",
        { class: "choice" + (suggested.includes(label) ? " suggested" : ""), for: id },
        input,
        i < 9 ? el("kbd", { "aria-hidden": "true" }, String(i + 1)) : el("span", { class: "kbd-none" }),
        el("span", { class: "name" }, label),
        suggested.includes(label) ? el("span", { class: "tag" }, "suggested") : null,
        el("span", { class: "bar", "aria-hidden": "true" }, fill),
        el("span", { class: "pct", id: id + "-p" }, pct(p)),
      );
      choices.append(row);
    });
    refreshChoice();
    showAlike(item.id);
    const text = $("item-text");
    text.tabIndex = -1;
    focusSoon(text);
  }

  // After sign-in the workspace is shown right after the first render: focus once it is visible.
  function focusSoon(node) {
    requestAnimationFrame(() => node.focus({ preventScroll: true }));
  }

  async function loadNext() {
    const data = await api("GET", "/v1/review/next");
    if (!hrlm.token()) return data.reviewer; // signed out meanwhile: show nothing
    if (!Object.keys(guidelines).length) await loadGuidelines();
    render(data);
    return data.reviewer;
  }

  // -- answering --------------------------------------------------------------------------------

  function setBusy(value) {
    busy = value;
    for (const id of ["submit", "accept", "skip", "flag", "refresh", "undo"]) $(id).disabled = value;
  }

  async function send(action, extra) {
    if (!item || busy) return;
    const body = { action, ...(extra || {}) };
    const answered = item;
    setBusy(true);
    try {
      const result = await api("POST", `/v1/review/items/${answered.id}`, body);
      counts[action] += 1;
      const labels = action === "accept" || action === "correct" ? (result.label || "").split("|").filter(Boolean) : [];
      const also = labels.length ? await answerAlike(labels) : "";
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(counts));
      if (left !== null) left = Math.max(0, left - 1);
      showCounts();
      const words = {
        accept: `Accepted “${result.label || "no label"}”`,
        correct: `Corrected to “${(result.label || "").split("|").join(", ")}”`,
        skip: "Skipped",
        flag: "Flagged for an admin",
      };
      say(`${words[action]} (item #${answered.id})${also}. U takes back the first.`, "ok");
      answeredLast = { id: answered.id, action };
      showUndo();
      await loadNext();
    } catch (err) {
      say(err.message, "error");
      if (err.status === 409 || err.status === 404) await loadNext().catch(() => {});
    } finally {
      setBusy(false);
    }
  }

  async function loadGuidelines() {
    try {
      guidelines = (await api("GET", "/v1/review/guidelines")).guidelines;
    } catch (err) {
      guidelines = {};
    }
  }

  function showGuide(label) {
    const g = label ? guidelines[label] : null;
    $("guide").hidden = !g;
    $("guide-label").textContent = g ? label : "";
    $("guide-text").textContent = g ? g.description : "";
    $("guide-examples").replaceChildren(...(g ? g.examples.map((e) => el("li", {}, e)) : []));
  }

  async function openGuides() {
    await loadGuidelines();
    const labels = item ? item.labels : Object.keys(guidelines);
    const known = labels.filter((label) => guidelines[label]);
    $("guide-all").replaceChildren(
      ...known.flatMap((label) => [
        el("dt", {}, label),
        el("dd", {}, guidelines[label].description, guidelines[label].examples.length
          ? el("ul", { class: "guide-examples" }, ...guidelines[label].examples.map((e) => el("li", {}, e)))
          : null),
      ]),
    );
    $("guide-none").hidden = known.length > 0;
    $("guide-dialog").showModal();
  }

  // The alike open items, counted before saving; the checkbox gives them this item's label too.
  async function showAlike(id) {
    alike = [];
    $("bulk").hidden = true;
    $("bulk-on").checked = false;
    try {
      const found = await api("GET", `/v1/review/items/${id}/similar`);
      if (!item || item.id !== id) return;
      alike = found.items;
    } catch (err) {
      alike = [];
    }
    $("bulk-count").textContent = String(alike.length);
    $("bulk-items").replaceChildren(...alike.map((a) => el("li", {}, `#${a.id} (${Math.round(100 * a.similarity)}% alike): ${a.text}`)));
    $("bulk").hidden = alike.length === 0;
  }

  async function answerAlike(labels) {
    if (!$("bulk-on").checked || !alike.length) return "";
    const result = await api("POST", "/v1/review/bulk", { item_ids: alike.map((a) => a.id), labels });
    counts.correct += result.results.filter((r) => r.action === "correct").length;
    counts.accept += result.results.filter((r) => r.action === "accept").length;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(counts));
    if (left !== null) left = Math.max(0, left - result.answered);
    return ` and ${result.answered} alike item${result.answered === 1 ? "" : "s"}` + (result.refused.length ? ` (${result.refused.length} could not take it)` : "");
  }

  function showUndo() {
    $("undo").hidden = !answeredLast;
    $("undo-item").textContent = answeredLast ? "#" + answeredLast.id : "";
  }

  // Take back this session's latest answer: the item comes back, leased to this reviewer, for a new answer.
  async function undoLast() {
    if (!answeredLast || busy) return;
    const last = answeredLast;
    setBusy(true);
    try {
      await api("POST", `/v1/review/items/${last.id}/undo`);
      counts[last.action] = Math.max(0, counts[last.action] - 1);
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(counts));
      answeredLast = null;
      showUndo();
      say(`Took back your answer to item #${last.id}; answer it again.`, "ok");
      await loadNext();
    } catch (err) {
      say(err.message, "error");
      answeredLast = null;
      showUndo();
    } finally {
      setBusy(false);
    }
  }

  function save() {
    if (!item) return;
    if (sameAsSuggestion()) {
      send("accept");
      return;
    }
    const chosen = selected();
    if (chosen.length === 0) {
      say("Choose at least one label, or flag the item if none fits.", "error");
      return;
    }
    send("correct", item.multi_label ? { labels: chosen } : { label: chosen[0] });
  }

  function choose(index) {
    const inputs = document.querySelectorAll("#choices input");
    const input = inputs[index];
    if (!input) return;
    input.checked = item.multi_label ? !input.checked : true;
    input.focus({ preventScroll: true });
    refreshChoice();
  }

  function reset() {
    const suggested = suggestionList();
    for (const input of document.querySelectorAll("#choices input")) input.checked = suggested.includes(input.value);
    refreshChoice();
  }

  function openFlag() {
    if (!item || busy) return;
    $("flag-note").value = "";
    $("flag-dialog").showModal();
    $("flag-note").focus();
  }

  // -- wiring ----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    showCounts();
    hrlm.setupSignIn(loadNext);
    $("answer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      save();
    });
    $("accept").addEventListener("click", () => send("accept"));
    $("skip").addEventListener("click", () => send("skip"));
    $("flag").addEventListener("click", openFlag);
    $("refresh").addEventListener("click", () => loadNext().catch((err) => say(err.message, "error")));
    $("undo").addEventListener("click", undoLast);
    const dialog = $("flag-dialog");
    $("flag-note").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        dialog.close("flag");
      }
    });
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "flag") {
        const note = $("flag-note").value.trim();
        send("flag", note ? { note } : undefined);
      }
      dialog.returnValue = "";
    });

    // Shortcuts act only while the focus is on the item, the empty-queue notice or their controls (or on no
    // control at all): Enter on a link ("Admin", "Skip to content") follows the link and answers nothing.
    function onItem(target) {
      if (!target || target === document.body || target === $("main")) return true;
      return $("item").contains(target) || $("empty").contains(target);
    }

    document.addEventListener("keydown", (event) => {
      if ($("workspace").hidden || !onItem(event.target) || !hrlm.isShortcut(event)) return;
      const key = event.key;
      if (key === "u" || key === "U") {
        event.preventDefault();
        undoLast();
        return;
      }
      if ((key === "b" || key === "B") && item && alike.length) {
        event.preventDefault();
        $("bulk-on").checked = !$("bulk-on").checked;
        return;
      }
      if (key === "g" || key === "G") {
        event.preventDefault();
        openGuides();
        return;
      }
      if (!item) {
        if (key === "r" || key === "R") {
          event.preventDefault();
          loadNext().catch((err) => say(err.message, "error"));
        }
        return;
      }
      if (/^[1-9]$/.test(key)) {
        event.preventDefault();
        choose(Number(key) - 1);
      } else if (key === "Enter") {
        if (event.target && event.target.tagName === "BUTTON") return; // the button's own click
        event.preventDefault();
        save();
      } else if (key === "a" || key === "A") {
        event.preventDefault();
        send("accept");
      } else if (key === "s" || key === "S") {
        event.preventDefault();
        send("skip");
      } else if (key === "f" || key === "F") {
        event.preventDefault();
        openFlag();
      } else if (key === "Escape") {
        reset();
      }
    });
  });
})();
