// Why the model said so, on the review page: the item's words highlighted by their attributions
// (GET /v1/review/items/{id}/explain?label=...: integrated gradients, computed by the service on demand
// and cached per item and label). Green words are evidence for the label, red ones against it; the
// stronger the colour, the stronger the evidence. Built with textContent only, never HTML from data.
"use strict";

const hrlmEvidence = (() => {
  const { api, el, $ } = hrlm;
  let shown = null; // "itemId|label" on screen or on its way
  let timer = null;

  function clear() {
    shown = null;
    clearTimeout(timer);
    $("evidence-label").textContent = "";
    $("evidence-status").textContent = "";
    $("evidence-text").replaceChildren();
    $("evidence-for").replaceChildren();
    $("evidence-against").replaceChildren();
    $("evidence").hidden = true;
  }

  function words(list) {
    return list.length ? list.map((w) => w.text).join(", ") : "none";
  }

  function render(found) {
    const e = found.explanation;
    const strongest = Math.max(1e-9, ...e.words.map((w) => Math.abs(w.score)));
    const parts = [];
    let at = 0;
    for (const w of e.words) {
      if (w.start > at) parts.push(e.text.slice(at, w.start));
      const strength = Math.abs(w.score) / strongest;
      if (strength < 0.08) {
        parts.push(e.text.slice(w.start, w.end));
      } else {
        const mark = el("mark", { class: w.score > 0 ? "ev-for" : "ev-against", title: (w.score > 0 ? "+" : "") + w.score.toFixed(3) });
        mark.style.setProperty("--ev", (0.15 + 0.75 * strength).toFixed(2));
        mark.textContent = e.text.slice(w.start, w.end);
        parts.push(mark);
      }
      at = w.end;
    }
    if (at < e.text.length) parts.push(e.text.slice(at));
    $("evidence-text").replaceChildren(...parts);
    const ranked = [...e.words].sort((a, b) => b.score - a.score);
    $("evidence-for").textContent = words(ranked.filter((w) => w.score > 0).slice(0, 5));
    $("evidence-against").textContent = words(ranked.filter((w) => w.score < 0).reverse().slice(0, 5));
    const partial = e.windows_attributed < e.windows ? ` · first ${e.windows_attributed} of ${e.windows} windows` : "";
    $("evidence-status").textContent = `model ${found.model_version} · ${e.seconds.toFixed(1)} s${partial}`;
  }

  // Show the evidence of item ``id`` for ``label``; a quick succession of choices fetches only the last.
  function show(id, label) {
    const key = id + "|" + label;
    if (key === shown) return;
    shown = key;
    clearTimeout(timer);
    $("evidence").hidden = false;
    $("evidence-label").textContent = label;
    $("evidence-status").textContent = "Working out which words count…";
    timer = setTimeout(async () => {
      try {
        const found = await api("GET", `/v1/review/items/${id}/explain?label=${encodeURIComponent(label)}`);
        if (shown === key && hrlm.token()) render(found);
      } catch (err) {
        if (shown === key) $("evidence-status").textContent = "No evidence: " + err.message;
      }
    }, 250);
  }

  hrlm.onSignOut(clear);
  return { show, clear };
})();
