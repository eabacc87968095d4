/* The new-session form: sent to POST /api/v1/sessions with upload progress; an image fine-tune
   asks for a caption per chosen image (a form field named after the file, as the API takes it). */
"use strict";
(function () {
  const { el, upload } = window.helix;
  const form = document.getElementById("new-session");
  const files = document.getElementById("files");
  const captions = document.getElementById("captions");

  if (files && captions) {
    files.addEventListener("change", () => {
      const list = document.getElementById("caption-list");
      list.replaceChildren(...Array.from(files.files).map((f, i) => el("div", { class: "caption" },
        el("label", { for: `caption-${i}`, text: `Caption for ${f.name}` }),
        el("input", { id: `caption-${i}`, "data-file": f.name, maxlength: 1000, placeholder: "what the picture shows" }))));
      captions.hidden = files.files.length === 0;
    });
  }

  function fail(message) {
    const p = document.getElementById("form-error");
    p.textContent = message;
    p.hidden = false;
    document.getElementById("create").disabled = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("form-error").hidden = true;
    const data = new FormData(form);
    data.delete("csrf_token");  // sent as the X-CSRFToken header instead
    for (const [key, value] of Array.from(data.entries())) {
      if (value === "" || (value instanceof File && !value.name)) data.delete(key);
    }
    // The way to learn, as the API's two fields (neither sent: both, and the report chooses).
    const learning = data.get("learning");
    data.delete("learning");
    if (learning) {
      data.append("rag_enabled", learning === "finetune" ? "no" : "yes");
      data.append("text_finetune_enabled", learning === "retrieval" ? "no" : "yes");
    }
    for (const input of document.querySelectorAll("#caption-list input")) {
      if (input.value.trim()) data.append(input.dataset.file, input.value.trim());
    }
    const total = Array.from(data.values()).reduce((n, v) => n + (v instanceof File ? v.size : 0), 0);
    if (total > Number(form.dataset.maxBytes)) {
      fail(`The files add up to ${Math.ceil(total / 1048576)} MB; this server takes at most ${Math.floor(form.dataset.maxBytes / 1048576)} MB at once.`);
      return;
    }
    document.getElementById("create").disabled = true;
    const progress = document.getElementById("upload-progress");
    document.getElementById("upload").hidden = total === 0;
    try {
      const session = await upload(form.getAttribute("action"), data, (share) => {
        progress.value = Math.round(share * 100);
        document.getElementById("upload-percent").textContent = `${Math.round(share * 100)}%`;
      });
      window.location.assign(`/sessions/${encodeURIComponent(session.id)}`);
    } catch (err) {
      fail(err.message);
    }
  });
})();
