// Shared by the hrlm pages: the token (kept in sessionStorage), API calls with it, small DOM helpers.
// No framework and no CDN: the pages' Content-Security-Policy allows scripts from this server only.
"use strict";

const hrlm = (() => {
  const TOKEN_KEY = "hrlm.token";
  const listeners = [];

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, "The service cannot be reached; check that it is running.");
    }
    if (response.status === 401) {
      signOut("Your token is not valid or was revoked. Sign in again.");
    }
    const type = response.headers.get("content-type") || "";
    const data = type.includes("application/json") ? await response.json() : await response.text();
    if (!response.ok) {
      const detail = data && typeof data === "object" && data.detail ? data.detail : response.statusText;
      throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return data;
  }

  // Fetch a file with the token (a plain link cannot send it).
  async function blob(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token() }, cache: "no-store" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (err) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return response.blob();
  }

  // el("td", {class: "x"}, "text", child): builds nodes with textContent only, never HTML from data.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  let statusTimer = null;
  function say(message, kind) {
    const box = $("status");
    box.textContent = message;
    box.className = "status show " + (kind || "info");
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { box.className = "status " + (kind || "info"); }, kind === "error" ? 8000 : 3500);
  }

  function pct(x) {
    return (100 * x).toFixed(x >= 0.995 || x < 0.005 ? 0 : 1) + "%";
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  }

  function showSignedIn(who) {
    $("signin").hidden = true;
    $("workspace").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = who.name;
    $("who-role").textContent = who.role;
  }

  // Sign-out (or a token the API refuses) forgets everything this tab was shown: the session storage
  // (token, progress), the header's name and, through the pages' listeners, every rendered datum: the
  // elements are emptied, not merely hidden.
  function signOut(message) {
    sessionStorage.clear();
    $("workspace").hidden = true;
    $("who").hidden = true;
    $("who-name").textContent = "";
    $("who-role").textContent = "";
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    clearTimeout(statusTimer);
    $("status").textContent = "";
    $("status").className = "status";
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    const input = $("token");
    input.value = "";
    input.focus();
    for (const fn of listeners) fn();
  }

  // Sign-in: `check()` calls the API with the new token and resolves to {name, role}; a failure is shown.
  function setupSignIn(check) {
    const form = $("signin-form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) {
        $("signin-error").textContent = "Paste your API token first.";
        $("token").focus();
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, value);
      $("signin-error").textContent = "";
      $("who-name").textContent = "";
      $("who-role").textContent = "";
      try {
        showSignedIn(await check());
      } catch (err) {
        signOut(err.message);
      }
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    if (token()) {
      check().then(showSignedIn).catch((err) => signOut(err.message));
    } else {
      $("token").focus();
    }
  }

  function onSignOut(fn) {
    listeners.push(fn);
  }

  // A key press meant for the page, not for a text field, a dialog or the browser.
  function isShortcut(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return false;
    const t = event.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) {
      return t.type === "radio" || t.type === "checkbox";
    }
    return !document.querySelector("dialog[open]");
  }

  return { ApiError, api, blob, el, $, say, pct, when, setupSignIn, signOut, onSignOut, isShortcut, token };
})();
