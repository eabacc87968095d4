/* A small Markdown renderer that builds DOM nodes and sets only their text, so whatever a reply
   holds (tags, scripts, event handlers) is shown as the characters it is and never parsed as HTML.
   Understood: fenced code blocks, headings, bullet and numbered lists, quotes, paragraphs, and
   inline code, **bold**, *italic* and [links](https://...) (http and https addresses only). */
"use strict";
window.helixMarkdown = (function () {
  const el = (tag, text) => { const n = document.createElement(tag); if (text !== undefined) n.textContent = text; return n; };

  const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+?)\*\*|__([^_]+?)__|\*([^*\s][^*]*?)\*|\[([^\]]+)\]\(([^)\s]+)\)/g;

  function inline(text, parent) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
      if (m[2] !== undefined) parent.append(el("code", m[2]));
      else if (m[3] !== undefined || m[4] !== undefined) inline(m[3] ?? m[4], parent.appendChild(el("strong")));
      else if (m[5] !== undefined) inline(m[5], parent.appendChild(el("em")));
      else {
        let url = null;
        try { url = new URL(m[7]); } catch (_) { url = null; }
        if (url && (url.protocol === "https:" || url.protocol === "http:")) {
          const a = el("a", m[6]);
          a.href = url.href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          parent.append(a);
        } else {
          parent.append(document.createTextNode(m[0]));
        }
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
    return parent;
  }

  function render(source) {
    const out = document.createDocumentFragment();
    const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*(```+|~~~+)\s*([\w+-]*)/);
      if (fence) {
        const code = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) code.push(lines[i++]);
        i++;  // the closing fence (or the end of a reply still streaming)
        const pre = el("pre");
        const c = el("code", code.join("\n"));
        if (fence[2]) c.dataset.language = fence[2];
        pre.append(c);
        out.append(pre);
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        out.append(inline(heading[2], el(`h${Math.min(6, heading[1].length + 2)}`)));
        i++;
        continue;
      }
      const bullet = /^\s*[-*+]\s+/, numbered = /^\s*\d+[.)]\s+/;
      if (bullet.test(line) || numbered.test(line)) {
        const kind = bullet.test(line) ? bullet : numbered;
        const list = el(kind === bullet ? "ul" : "ol");
        while (i < lines.length && kind.test(lines[i])) list.append(inline(lines[i++].replace(kind, ""), el("li")));
        out.append(list);
        continue;
      }
      if (/^\s*>/.test(line)) {
        const quote = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) quote.push(lines[i++].replace(/^\s*>\s?/, ""));
        out.append(inline(quote.join("\n"), el("blockquote")));
        continue;
      }
      if (!line.trim()) { i++; continue; }
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|[-*+]\s|\d+[.)]\s|>)/.test(lines[i])) para.push(lines[i++]);
      if (!para.length) para.push(lines[i++]);
      out.append(inline(para.join("\n"), el("p")));
    }
    return out;
  }

  return { render };
})();
