/* The usage page: GET /api/v1/usage by day, drawn as a chart of tokens and a table. */
"use strict";
(function () {
  const { el, api } = window.helix;

  async function load() {
    const status = document.getElementById("usage-status");
    try {
      const u = await api("GET", "/api/v1/usage?group_by=day");
      const first = Date.parse(u.from);
      const dayOf = (d) => Math.floor((Date.parse(d) - first) / 86400000) + 1;
      document.getElementById("usage-chart").replaceChildren(window.helixChart.lineChart([
        { name: "prompt tokens", points: u.data.map((d) => [dayOf(d.day), d.prompt_tokens]) },
        { name: "reply tokens", points: u.data.map((d) => [dayOf(d.day), d.completion_tokens]) },
      ], { xLabel: "day of the last 30", yLabel: "tokens", title: "Tokens by day" }));
      const body = document.querySelector("#usage-days tbody");
      body.replaceChildren(...(u.data.length ? u.data.map((d) => el("tr", {}, [d.day, d.jobs, d.prompt_tokens,
        d.completion_tokens, d.images, d.runner_seconds, d.training_tokens, d.stored_bytes, d.credits]
        .map((c) => el("td", { text: String(c) }))))
        : [el("tr", {}, el("td", { colspan: 9, text: "No finished work in these 30 days." }))]));
      const m = u.month, warning = document.getElementById("credits-warning");
      if (m.warning) {
        warning.textContent = `You have used ${m.credits.toFixed(2)} of your plan's ${m.monthly_credits} credits this month:`
          + " new work is refused once they are spent.";
        warning.hidden = false;
      }
      const t = u.totals;
      status.textContent = `${t.jobs} jobs: ${t.total_tokens} tokens, ${t.images} images,`
        + ` ${t.runner_seconds} runner seconds, ${t.training_tokens} trained tokens, ${t.stored_bytes} bytes stored.`
        + ` Your files take ${u.storage.used_bytes} bytes`
        + (u.storage.storage_bytes ? ` of your plan's ${u.storage.storage_bytes}.` : ".");
    } catch (err) {
      status.textContent = `Could not load your usage: ${err.message}`;
    }
  }
  load();
})();
