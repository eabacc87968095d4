/* One session's page, filled from GET /api/v1/sessions/<id>: a chat streams its reply live from
   the events stream, an image session shows its pictures, and a fine-tune shows its stages, the
   question/answer pairs (with an editor while it waits for review), the loss curve, the
   evaluation before and after and the knowledge report (four ways, the one chats use); a reply
   that used the documents says which way and cites its chunks; re-read every couple of seconds while it runs. Every piece of
   user or model text is set as text (helix.el, the Markdown renderer), never as HTML. */
"use strict";
(function () {
  const { el, api, showError } = window.helix;
  const root = document.getElementById("session");
  const id = root.dataset.id;
  const base = `/api/v1/sessions/${encodeURIComponent(id)}`;
  const STAGES = [["extract_text", "Read the documents"], ["index_documents", "Index for retrieval"],
    ["generate_questions", "Write questions"], ["edit_questions", "Review"], ["finetune", "Train"], ["complete", "Done"]];
  const TRAINING_STAGES = ["generate_questions", "edit_questions", "finetune"];
  const WAY_NAMES = { base: "Base model", retrieval: "Retrieval", finetune: "Fine-tuned", both: "Fine-tuned with retrieval" };
  const IMAGE_STAGES = [["finetune", "Train"], ["complete", "Done"]];
  let session = null, source = null, pollTimer = null, pairsDirty = false, reviewFor = null;

  const systemTurns = () => session.interactions.filter((i) => i.creator === "system");
  const finetuneTurn = () => systemTurns().filter((i) => i.mode === "finetune").pop();
  const unfinished = () => session.interactions.some((i) => !i.finished);
  const fileUrl = (path) => `/api/v1/filestore/viewer/${path.split("/").map(encodeURIComponent).join("/")}`;

  /* ---------- conversation: chat and image turns ---------- */

  function bubbleBody(interaction) {
    const body = el("div", { class: "body" });
    if (interaction.creator === "system" && session.type === "text") body.append(window.helixMarkdown.render(interaction.message));
    else if (interaction.message) body.append(el("p", { class: "plain", text: interaction.message }));
    if (session.type === "image" && interaction.creator === "system" && interaction.mode === "inference") {
      const gallery = el("div", { class: "gallery" });
      for (const f of interaction.files || []) {
        gallery.append(el("figure", {}, el("img", { src: fileUrl(f), alt: `Generated for: ${previousPrompt(interaction)}`, loading: "lazy" }),
          el("figcaption", {}, el("a", { href: fileUrl(f), text: f.split("/").pop() }))));
      }
      if (gallery.childElementCount) body.append(gallery);
    }
    if (!interaction.finished) {
      body.append(el("p", { class: "working", role: "status" }, workingText(interaction),
        interaction.progress ? ` (${interaction.progress}%)` : ""));
    }
    if (interaction.state === "error") body.append(el("p", { class: "error", text: `Failed: ${interaction.error || "unknown error"}` }));
    const way = (interaction.metadata || {}).knowledge_way;
    if (way && interaction.finished) body.append(sources(way, interaction.citations || []));
    return body;
  }

  /* How a reply used the session's documents: the way, and the chunks it was given, best first. */
  function sources(way, citations) {
    const box = el("div", { class: "sources" }, el("p", { class: "hint", text: `Answered by: ${WAY_NAMES[way] || way}` }));
    if (citations.length) {
      box.append(el("ol", { class: "citations", "aria-label": "Sources" }, citations.map((c) =>
        el("li", {}, el("span", { text: `${c.file}, chunk ${c.chunk}` }),
          el("span", { class: "score", text: ` (similarity ${score(c.similarity)})` })))));
    }
    return box;
  }

  /* What an unfinished turn is doing; while its job is queued, why it waits and its place. */
  function workingText(interaction) {
    if (interaction.waiting_reason) {
      const place = typeof interaction.queue_position === "number" ? ` (place ${interaction.queue_position + 1} in the queue)` : "";
      return `Waiting: ${interaction.waiting_reason}${place}`;
    }
    return interaction.status || (interaction.state === "waiting" && !interaction.message ? "Waiting for a runner…" : "Writing…");
  }

  function previousPrompt(interaction) {
    const k = session.interactions.indexOf(interaction);
    const prev = k > 0 ? session.interactions[k - 1] : null;
    return prev && prev.creator === "user" ? prev.message : "this session";
  }

  function renderConversation() {
    const list = document.getElementById("messages");
    const turns = session.interactions.filter((i) => i.mode === "inference");
    list.replaceChildren(...turns.map((i) => el("li", {
      class: `message ${i.creator}`, id: `m-${i.id}`, "data-state": i.state,
    }, el("div", { class: "who", text: i.creator === "user" ? "You" : "Helix" }), bubbleBody(i))));
    document.getElementById("conversation").hidden = turns.length === 0;
  }

  function updateMessage(interaction) {
    const node = document.getElementById(`m-${interaction.id}`);
    if (!node) return renderConversation();
    node.dataset.state = interaction.state;
    node.querySelector(".body").replaceWith(bubbleBody(interaction));
  }

  /* ---------- fine-tune ---------- */

  /* The stages this fine-tune goes through: indexing only with retrieval, training only with fine-tuning. */
  function stagesOf() {
    if (session.type === "image") return IMAGE_STAGES;
    const ways = ((session.config || {}).finetune || {}).knowledge || {};
    return STAGES.filter(([key]) => (key !== "index_documents" || ways.retrieval)
      && (!TRAINING_STAGES.includes(key) || ways.finetune !== false));
  }

  function renderStages(turn) {
    const stages = stagesOf();
    const at = stages.findIndex(([key]) => key === turn.data_prep_stage);
    document.getElementById("stages").replaceChildren(...stages.map(([key, label], k) => {
      const state = turn.state === "error" && k === at ? "failed" : k < at || turn.data_prep_stage === "complete" ? "done" : k === at ? "current" : "todo";
      return el("li", { class: `stage ${state}`, "data-stage": key, "aria-current": k === at ? "step" : null },
        el("span", { text: label }), el("span", { class: "visually-hidden", text: ` (${state})` }));
    }));
    document.getElementById("ft-status").textContent = turn.state === "error"
      ? `Failed: ${turn.error}` : turn.waiting_reason ? workingText(turn) : (turn.status || turn.data_prep_stage || turn.state);
    document.getElementById("ft-progress").value = turn.progress || 0;
    const errors = [];
    for (const [file, info] of Object.entries(turn.data_prep_files || {})) {
      if (info && info.error) errors.push(el("li", {}, el("strong", { text: file }), `: ${info.error}`));
    }
    document.getElementById("chunk-errors").replaceChildren(...(errors.length
      ? [el("h3", { text: "Documents that could not be used" }), el("ul", {}, errors)] : []));
  }

  function pairRow(pair, k) {
    return el("fieldset", { class: "pair" },
      el("legend", { text: `Pair ${k + 1}` }),
      el("label", { for: `q-${k}`, text: "Question" }),
      el("textarea", { id: `q-${k}`, class: "question", rows: 2, oninput: () => { pairsDirty = true; } }, pair.question || ""),
      el("label", { for: `a-${k}`, text: "Answer" }),
      el("textarea", { id: `a-${k}`, class: "answer", rows: 3, oninput: () => { pairsDirty = true; } }, pair.answer || ""),
      el("button", { type: "button", class: "danger", text: "Remove", "aria-label": `Remove pair ${k + 1}`,
        onclick: (e) => { pairsDirty = true; e.target.closest("fieldset").remove(); renumber(); } }));
  }

  function renumber() {
    document.querySelectorAll("#pairs fieldset.pair").forEach((f, k) => {
      f.querySelector("legend").textContent = `Pair ${k + 1}`;
      f.querySelector(".question").id = `q-${k}`; f.querySelector("label").htmlFor = `q-${k}`;
      f.querySelector(".answer").id = `a-${k}`; f.querySelectorAll("label")[1].htmlFor = `a-${k}`;
      f.querySelector("button").setAttribute("aria-label", `Remove pair ${k + 1}`);
    });
  }

  function editedPairs() {
    return Array.from(document.querySelectorAll("#pairs fieldset.pair")).map((f) => ({
      question: f.querySelector(".question").value.trim(), answer: f.querySelector(".answer").value.trim(),
    }));
  }

  function renderReview(turn) {
    const review = document.getElementById("review");
    const editing = turn.state === "editing";
    const pairs = turn.qa_pairs || [];
    review.hidden = session.type !== "text" || (!editing && !pairs.length);
    if (review.hidden) return;
    for (const id of ["add-pair", "save-pairs", "start-training"]) document.getElementById(id).hidden = !editing;
    document.getElementById("review-help").textContent = editing
      ? `${pairs.length} pairs were written from your documents. Edit, add or remove them, save, then start the training.`
      : `${pairs.length} pairs.`;
    if (editing && (pairsDirty || reviewFor === turn.id)) return;  // keep what is being edited
    reviewFor = editing ? turn.id : null;
    const box = document.getElementById("pairs");
    if (editing) box.replaceChildren(...pairs.map(pairRow));
    else box.replaceChildren(el("div", { class: "table-wrap" }, el("table", { class: "table", id: "pairs-table" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Question" }), el("th", { scope: "col", text: "Answer" }))),
      el("tbody", {}, pairs.map((p) => el("tr", {}, el("td", { text: p.question }), el("td", { text: p.answer })))))));
  }

  function renderLoss(turn) {
    const history = turn.training_history || [];
    const loss = history.filter((p) => typeof p.loss === "number").map((p) => [p.step, p.loss]);
    const val = history.filter((p) => typeof p.val_loss === "number").map((p) => [p.step, p.val_loss]);
    document.getElementById("loss").hidden = loss.length === 0;
    if (!loss.length) return;
    document.getElementById("loss-chart").replaceChildren(window.helixChart.lineChart(
      [{ name: "training loss", points: loss }, { name: "validation loss", points: val }],
      { title: "Training loss by step" }));
  }

  const score = (v) => (typeof v === "number" ? v.toFixed(2) : "–");

  function renderEvaluation(turn) {
    const ev = turn.evaluation;
    const section = document.getElementById("evaluation");
    section.hidden = !ev || !Array.isArray(ev.questions);
    if (section.hidden) return;
    const metrics = ev.metrics || Object.keys(ev.before || {});
    document.getElementById("evaluation-summary").textContent = `${ev.held_out} held-out questions. ` +
      metrics.map((m) => `${m.replace(/_/g, " ")}: ${score((ev.before || {})[m])} before, ${score((ev.after || {})[m])} after`).join("; ") + ".";
    const ways = ev.ways ? ["base", "retrieval", "finetune", "both"] : ["base", "finetune"];
    const answerOf = { base: ["base_answer", "base"], finetune: ["tuned_answer", "tuned"],
      retrieval: ["retrieval_answer", "retrieval"], both: ["both_answer", "both"] };
    document.querySelector("#evaluation-table thead tr").replaceChildren(
      ...["Question", "Reference", ...ways.map((w) => WAY_NAMES[w])].map((h) => el("th", { scope: "col", text: h })));
    document.querySelector("#evaluation-table tbody").replaceChildren(...ev.questions.map((q) => el("tr", {},
      el("td", { text: q.question }), el("td", { text: q.reference }),
      ...ways.map((w) => el("td", {}, el("span", { text: q[answerOf[w][0]] || "" }),
        el("span", { class: "score", text: ` F1 ${score((q[answerOf[w][1]] || {}).token_f1)}` }))))));
    renderKnowledgeReport(ev);
  }

  /* The four ways side by side, and which one the session's chats use. */
  function renderKnowledgeReport(ev) {
    const section = document.getElementById("knowledge-report");
    section.hidden = !ev.ways;
    if (section.hidden) return;
    const knowledge = (session.config || {}).knowledge || {};
    const metrics = ev.metrics || Object.keys(ev.ways.base);
    document.querySelector("#knowledge-table thead tr").replaceChildren(el("th", { scope: "col", text: "Way" }),
      ...metrics.map((m) => el("th", { scope: "col", text: m.replace(/_/g, " ") })));
    const ways = Object.keys(WAY_NAMES).filter((w) => ev.ways[w]).map((w) => [w, ev.ways[w]]);
    document.querySelector("#knowledge-table tbody").replaceChildren(...ways.map(([way, scores]) =>
      el("tr", { "data-way": way, class: way === knowledge.way ? "chosen" : null },
        el("th", { scope: "row", text: WAY_NAMES[way] + (way === knowledge.way ? " (chats use this)" : "") }),
        ...metrics.map((m) => el("td", { text: score(scores[m]) })))));
    document.getElementById("knowledge-chosen").textContent = knowledge.way
      ? `Chats use ${WAY_NAMES[knowledge.way]}, ${knowledge.chosen_by === "user" ? "as you chose" : "the way that scored best"}.` : "";
  }

  function renderSamples(turn) {
    const samples = turn.samples || [];
    document.getElementById("samples").hidden = samples.length === 0;
    document.getElementById("sample-images").replaceChildren(...samples.map((s) => el("figure", {},
      el("img", { src: fileUrl(s.file), alt: `Sample: ${s.caption}` }), el("figcaption", { text: s.caption }))));
  }

  function renderFinetune() {
    const turn = finetuneTurn();
    document.getElementById("finetune").hidden = !turn;
    if (!turn) return;
    renderStages(turn);
    renderReview(turn);
    renderLoss(turn);
    renderEvaluation(turn);
    renderSamples(turn);
  }

  /* ---------- the whole page ---------- */

  function render() {
    document.getElementById("loading").hidden = true;
    renderFinetune();
    renderConversation();
    const turn = finetuneTurn();
    const canReply = !unfinished() && (session.mode === "inference" || (turn && turn.finished && turn.state === "complete"));
    const reply = document.getElementById("reply");
    reply.hidden = !canReply;
    document.getElementById("reply-label").textContent = session.type === "image" ? "Describe another picture" : "Message";
    document.getElementById("send").textContent = session.type === "image" ? "Generate" : "Send";
    renderControls();
  }

  /* Stop while the last turn is queued or running; run it again once it failed or was stopped. */
  function renderControls() {
    const last = systemTurns().pop();
    document.getElementById("cancel-work").hidden = !last || last.finished || last.state === "editing";
    document.getElementById("restart-work").hidden = !last || !last.finished || last.state !== "error";
  }

  async function control(method, path, done) {
    const status = document.getElementById("work-status");
    try {
      session = await api(method, `${base}/${path}`);
      status.textContent = done;
      render();
      follow();
    } catch (_) { /* the banner says why */ }
  }

  async function refresh() {
    session = await api("GET", base);
    render();
    return session;
  }

  function stopFollowing() {
    if (source) { source.close(); source = null; }
    if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
  }

  /* A fine-tune is re-read every two seconds (its stages, pairs and loss change in place). */
  function poll() {
    pollTimer = setTimeout(async () => {
      try { await refresh(); } catch (_) { /* the banner says why; keep trying */ }
      if (unfinished()) poll(); else pollTimer = null;
    }, 2000);
  }

  /* A reply streams from the events stream: the session as it is, deltas, then `end`. */
  function stream() {
    let failures = 0;
    source = new EventSource(`${base}/events`);
    source.addEventListener("session", (e) => { session = JSON.parse(e.data); failures = 0; render(); });
    source.addEventListener("delta", (e) => {
      const d = JSON.parse(e.data);
      const turn = session.interactions.find((i) => i.id === d.interaction_id);
      if (!turn) return;
      const text = turn.message || "";
      turn.message = typeof d.offset === "number" ? text.slice(0, d.offset) + d.delta : text + d.delta;
      turn.state = turn.state === "waiting" ? "waiting" : turn.state;
      updateMessage(turn);
    });
    source.addEventListener("interaction", (e) => {
      const update = JSON.parse(e.data);
      const k = session.interactions.findIndex((i) => i.id === update.id);
      if (k >= 0) session.interactions[k] = { ...session.interactions[k], ...update };
      render();
    });
    source.addEventListener("end", () => {
      stopFollowing();
      // The stream ends when an interaction finishes; if the reply is still going (another turn
      // finished, say), follow it again.
      refresh().then(() => { if (unfinished()) setTimeout(follow, 500); }).catch(() => {});
    });
    source.addEventListener("error", () => {
      if (!source) return;
      failures += 1;
      if (failures >= 3) {  // the stream keeps failing: fall back to reading the session
        stopFollowing();
        showError("Lost the live connection to the server; checking for the reply every few seconds.");
        poll();
      }
    });
  }

  function follow() {
    stopFollowing();
    if (!unfinished()) return;
    if (finetuneTurn() && !finetuneTurn().finished) poll(); else stream();
  }

  document.getElementById("reply").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("reply-input");
    const text = input.value.trim();
    if (!text) return;
    document.getElementById("send").disabled = true;
    try {
      session = await api("PUT", base, { input: text });
      input.value = "";
      render();
      follow();
    } catch (_) { /* the banner says why */ } finally {
      document.getElementById("send").disabled = false;
    }
  });

  document.getElementById("reply-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) document.getElementById("reply").requestSubmit();
  });

  document.getElementById("add-pair").addEventListener("click", () => {
    const box = document.getElementById("pairs");
    const row = pairRow({ question: "", answer: "" }, box.querySelectorAll("fieldset.pair").length);
    box.append(row);
    pairsDirty = true;
    row.querySelector("textarea").focus();
  });

  async function savePairs() {
    const turn = finetuneTurn();
    const status = document.getElementById("review-status");
    const saved = await api("PUT", `${base}/finetune/text/conversations/${encodeURIComponent(turn.id)}`, editedPairs());
    pairsDirty = false;
    status.textContent = `Saved ${saved.length} pairs.`;
    return saved;
  }

  document.getElementById("save-pairs").addEventListener("click", () => savePairs().catch(() => {}));

  document.getElementById("start-training").addEventListener("click", async () => {
    const button = document.getElementById("start-training");
    button.disabled = true;
    try {
      if (pairsDirty) await savePairs();
      session = await api("POST", `${base}/finetune/start`);
      document.getElementById("review-status").textContent = "Training started.";
      reviewFor = null;
      render();
      follow();
    } catch (_) { /* the banner says why */ } finally {
      button.disabled = false;
    }
  });

  document.getElementById("cancel-work").addEventListener("click", () => control("POST", "cancel", "Stopped."));
  document.getElementById("restart-work").addEventListener("click", () => control("PUT", "restart", "Running again."));

  refresh().then(follow).catch((err) => {
    document.getElementById("loading").textContent = `Could not load this session: ${err.message}`;
  });
})();
