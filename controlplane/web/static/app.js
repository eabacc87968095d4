/* Helpers every page uses: calls to the JSON API with the sign-in cookie and the page's CSRF
   token, a message when a call fails (the server unreachable included), and a DOM builder that
   only ever sets text, so user content can never become markup. */
"use strict";
window.helix = (function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function showError(message) {
    const banner = document.getElementById("banner");
    banner.replaceChildren(el("span", { text: message }),
      el("button", { type: "button", class: "link", text: "Dismiss", onclick: () => { banner.hidden = true; } }));
    banner.hidden = false;
  }

  function clearError() { document.getElementById("banner").hidden = true; }

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  async function errorOf(response) {
    let message = `the server answered ${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 401) message = "You are signed out: reload the page to sign in again.";
    return new ApiError(message, response.status);
  }

  /* fetch() against the API; resolves to the parsed JSON, or rejects with an ApiError whose
     message says what went wrong (and shows it, unless quiet). */
  async function api(method, url, body, { quiet = false } = {}) {
    const headers = { "X-CSRFToken": csrf(), "Accept": "application/json" };
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    } catch (err) {
      const e = new ApiError("Cannot reach the server: check your connection and try again.", 0);
      if (!quiet) showError(e.message);
      throw e;
    }
    if (!response.ok) {
      const e = await errorOf(response);
      if (!quiet) showError(e.message);
      throw e;
    }
    clearError();
    return response.status === 204 ? null : response.json();
  }

  /* An upload with progress (fetch cannot report it): resolves to the JSON answer. */
  function upload(url, formData, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* keep null */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new ApiError((body && body.error) || `the server answered ${xhr.status}`, xhr.status));
      });
      xhr.addEventListener("error", () => reject(new ApiError("Cannot reach the server: check your connection and try again.", 0)));
      xhr.send(formData);
    });
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  return { el, api, upload, showError, clearError, csrf, when, ApiError };
})();
