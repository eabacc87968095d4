/* Markdown for model replies: markdown-it (vendor/, loaded first) parses, with raw HTML off, and
   this file builds the DOM from its tokens itself, setting only text, so whatever a reply holds
   (tags, scripts, event handlers) is shown as the characters it is and never parsed as HTML:
   markdown-it's own HTML string never reaches innerHTML. Links keep http and https addresses only;
   images become links, never <img>; a token not known here shows as its text. */
"use strict";
window.helixMarkdown = (function () {
  const md = window.markdownit({ html: false, linkify: false, typographer: false });
  const el = (tag, content) => { const n = document.createElement(tag); if (content !== undefined) n.textContent = content; return n; };
  const text = (s) => document.createTextNode(s);
  const SIMPLE = {
    bullet_list_open: "ul", list_item_open: "li", blockquote_open: "blockquote",
    thead_open: "thead", tbody_open: "tbody", tr_open: "tr", th_open: "th", td_open: "td",
    strong_open: "strong", em_open: "em", s_open: "s",
  };
  const ALIGN = /^text-align:(left|center|right)$/;
  const LANGUAGE = /^[A-Za-z0-9_+#.-]{1,40}$/;

  function webAddress(href) {
    let url;
    try { url = new URL(href); } catch (_) { return null; }
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  }

  function link(href) {
    const a = el("a");
    a.href = href;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    return a;
  }

  /* The element an opening token stands for, appended to parent; returns where its children go
     (parent itself for a token drawn as nothing: a tight list's paragraph, a link to an address
     that is not http or https, anything unknown). */
  function open(token, parent) {
    let node = null;
    if (Object.hasOwn(SIMPLE, token.type)) node = el(SIMPLE[token.type]);
    else if (token.type === "paragraph_open") node = token.hidden ? null : el("p");
    // The page's own headings are h1 and h2: a reply's start at h3.
    else if (token.type === "heading_open") node = el(`h${Math.min(6, Number(token.tag.slice(1)) + 2)}`);
    else if (token.type === "ordered_list_open") {
      node = el("ol");
      const start = Number(token.attrGet("start"));
      if (Number.isInteger(start) && start !== 1) node.start = start;
    } else if (token.type === "link_open") {
      const href = webAddress(token.attrGet("href"));
      if (href) node = link(href);
    } else if (token.type === "table_open") {
      const wrap = parent.appendChild(el("div"));
      wrap.className = "table-wrap";
      return wrap.appendChild(el("table"));
    }
    if (!node) return parent;
    const align = ALIGN.exec(token.attrGet("style") || "");
    if (align) node.style.textAlign = align[1];  // a table column's (CSSOM, which the page's CSP allows)
    return parent.appendChild(node);
  }

  /* A token that neither opens nor closes. */
  function leaf(token, parent) {
    switch (token.type) {
      case "inline": walk(token.children || [], parent); break;
      case "text": parent.append(text(token.content)); break;
      case "code_inline": parent.append(el("code", token.content)); break;
      case "softbreak": parent.append(text("\n")); break;
      case "hardbreak": parent.append(el("br")); break;
      case "hr": parent.append(el("hr")); break;
      case "fence": case "code_block": {
        const code = el("code", token.content.replace(/\n$/, ""));
        const language = (token.info || "").trim().split(/\s+/)[0];
        if (LANGUAGE.test(language)) code.className = `language-${language}`;
        parent.appendChild(el("pre")).append(code);
        break;
      }
      case "image": {  // never an <img>: its description, a link where the address is http or https
        const src = webAddress(token.attrGet("src"));
        const label = token.content || token.attrGet("src") || "";
        parent.append(src ? Object.assign(link(src), { textContent: label }) : text(label));
        break;
      }
      default: if (token.content) parent.append(text(token.content));
    }
  }

  function walk(tokens, parent) {
    const stack = [parent];
    for (const token of tokens) {
      if (token.nesting === 1) stack.push(open(token, stack[stack.length - 1]));
      else if (token.nesting === -1) { if (stack.length > 1) stack.pop(); }
      else leaf(token, stack[stack.length - 1]);
    }
    return parent;
  }

  function render(source) {
    return walk(md.parse(String(source ?? ""), {}), document.createDocumentFragment());
  }

  return { render };
})();
