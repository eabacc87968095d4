/* The Account page: API keys through /api/v1/api_keys, and the reference's curl lines filled in
   with this server's address and, once created, the new key. */
"use strict";
(function () {
  const { el, api } = window.helix;
  const server = document.getElementById("server").dataset.server;

  function fillCurl(key) {
    for (const code of document.querySelectorAll("code.curl")) {
      code.textContent = code.dataset.template.replaceAll("{server}", server).replaceAll("{key}", key);
    }
    document.getElementById("curl-key-note").textContent = key === "<YOUR_API_KEY>"
      ? "Create a key above to see it filled in." : "Filled in with the key you just created.";
  }

  async function load() {
    const keys = await api("GET", "/api/v1/api_keys");
    const body = document.querySelector("#keys tbody");
    body.replaceChildren(...keys.map((k) => el("tr", {},
      el("td", {}, el("form", { class: "row rename", onsubmit: (e) => rename(e, k) },
        el("input", { name: "name", value: k.name, maxlength: 200, required: true, "aria-label": `Name of key ${k.hint}` }),
        el("button", { type: "submit", text: "Rename", "aria-label": `Rename key ${k.hint}` }))),
      el("td", {}, el("code", { text: k.hint })),
      el("td", { text: window.helix.when(k.created) }),
      el("td", {}, el("button", {
        type: "button", class: "danger", "aria-label": `Delete key ${k.name}`, text: "Delete",
        onclick: () => remove(k),
      })))));
    document.getElementById("keys-empty").hidden = keys.length > 0;
    document.getElementById("keys").hidden = keys.length === 0;
  }

  async function rename(event, key) {
    event.preventDefault();
    const name = event.target.elements.name.value.trim();
    if (!name) return;
    await api("PATCH", `/api/v1/api_keys?id=${encodeURIComponent(key.id)}`, { name });
    await load();
  }

  async function remove(key) {
    if (!window.confirm(`Delete the key “${key.name}”? Programs using it will stop working.`)) return;
    await api("DELETE", `/api/v1/api_keys?id=${encodeURIComponent(key.id)}`);
    await load();
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      const range = document.createRange();  // no clipboard access: select it for Ctrl+C
      range.selectNodeContents(document.getElementById("new-key-value"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      return document.execCommand && document.execCommand("copy");
    }
  }

  document.getElementById("new-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = document.getElementById("key-name").value.trim();
    const created = await api("POST", "/api/v1/api_keys", { name: name || "web" });
    document.getElementById("new-key-value").textContent = created.key;
    document.getElementById("created-key").hidden = false;
    document.getElementById("copy-status").textContent = "";
    document.getElementById("key-name").value = "";
    fillCurl(created.key);
    document.getElementById("copy-key").focus();
    await load();
  });

  document.getElementById("copy-key").addEventListener("click", async () => {
    const ok = await copy(document.getElementById("new-key-value").textContent);
    document.getElementById("copy-status").textContent = ok ? "Copied." : "Select the key and copy it (Ctrl+C).";
  });

  fillCurl("<YOUR_API_KEY>");
  load().catch(() => {});
})();
