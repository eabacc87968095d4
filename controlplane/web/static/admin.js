/* The admin page: GET /api/v1/dashboard every five seconds, drawn as four tables. */
"use strict";
(function () {
  const { el, api } = window.helix;
  const seconds = (s) => (typeof s === "number" ? `${s.toFixed(1)} s` : "–");
  const models = (m) => Object.entries(m || {}).map(([kind, names]) => `${kind}: ${[].concat(names).join(", ")}`).join("; ");

  function rows(id, items, cells, empty) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren(...(items.length ? items.map((item) => el("tr", {}, cells(item).map((c) => el("td", {}, c))))
      : [el("tr", {}, el("td", { colspan: body.closest("table").querySelectorAll("th").length, text: empty }))]));
  }

  async function load() {
    try {
      const d = await api("GET", "/api/v1/dashboard?decisions=50");
      rows("runners", d.runners, (r) => [r.id, r.status + (r.token_revoked ? " (token revoked)" : ""), models(r.models),
        r.token, `${seconds(r.seconds_since_seen)} ago`], "No runner has registered.");
      rows("queues", d.queues, (q) => [q.name, q.kind, q.model, String(q.length), String(q.held), seconds(q.oldest_wait_seconds)],
        "No queues yet.");
      rows("plans", d.plans, (p) => [p.name,
        Object.entries(p.limits).map(([name, value]) => `${name.replaceAll("_", " ")} ${value}`).join(", ") || "no limits",
        `${p.users}${p.members.length ? ": " + p.members.join(", ") + (p.users > p.members.length ? ", …" : "") : ""}`,
        String(p.keys)], "No plans.");
      rows("decisions", d.decisions, (x) => [new Date(x.at * 1000).toLocaleString(), x.runner, x.queue,
        seconds(x.waited_seconds), x.session_id],
      "No decisions yet.");
      document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    } catch (err) {
      document.getElementById("updated").textContent = `Could not load the dashboard: ${err.message}`;
    }
    setTimeout(load, 5000);
  }
  load();
})();
