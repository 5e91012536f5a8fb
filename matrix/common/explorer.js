// The run explorer: reads the JSON embedded in the page (#explorer-data) and draws its
// sections (a table each, with search and filters) and the record the URL's hash names
// (#<section>/<id>), with links along each record's references and back.
// Plain JS, no network: the page works from a file:// URL.
"use strict";

const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
const SHOWN = 100; // rows drawn per section; the search narrows the rest
const BACKREFS = 50; // records listed per referring section
const bySection = {};
const state = { q: "", filters: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const asList = (v) => (Array.isArray(v) ? v : v === null || v === undefined ? [] : [v]);
const text = (v) =>
  v === null || v === undefined ? "" :
  Array.isArray(v) && v.every((x) => typeof x !== "object") ? v.join(", ") :
  typeof v === "object" ? JSON.stringify(v) : String(v);
const anchor = (section, id) => "#" + section + "/" + encodeURIComponent(String(id));

function prepare() {
  for (const s of DATA.sections) {
    s.index = new Map();
    s.rows.forEach((r, i) => {
      r.__search = JSON.stringify(r).toLowerCase();
      r.__i = i;
      s.index.set(String(r[s.key]), r);
    });
    bySection[s.name] = s;
    state.filters[s.name] = {};
  }
}

// Links to `id` of `target`: in this page when it holds that section, and in the page that
// holds it elsewhere (DATA.external: the simulate explorer, by relative path).
function refLinks(target, id) {
  const out = [];
  const local = bySection[target];
  if (local) {
    const known = local.index.has(String(id));
    out.push(el("a", { href: anchor(target, id), class: known ? "ref" : "ref missing" }, String(id)));
  }
  const ext = (DATA.external || {})[target];
  if (ext) {
    const a = el("a", { href: ext + anchor(target, id), class: "ref lineage" }, local ? "↗" : String(id));
    a.title = "open in " + ext;
    out.push(a);
  }
  return out.length ? out : [String(id)];
}

function cell(section, field, value) {
  const target = (section.links || {})[field];
  if (!target) return el("td", {}, text(value).slice(0, 240));
  const parts = [];
  for (const id of asList(value)) parts.push(...refLinks(target, id), " ");
  return el("td", {}, parts);
}

function matches(section, row) {
  if (state.q && !row.__search.includes(state.q)) return false;
  for (const [field, want] of Object.entries(state.filters[section.name])) {
    if (want !== "" && !asList(row[field]).map(text).includes(want)) return false;
  }
  return true;
}

function filterSelect(section, field) {
  const values = [...new Set(section.rows.flatMap((r) => asList(r[field]).map(text)))].sort(
    (a, b) => a.localeCompare(b, undefined, { numeric: true })
  );
  const select = el("select", { "data-field": field, id: "filter-" + section.name + "-" + field },
    el("option", { value: "" }, field + ": all"),
    values.map((v) => el("option", { value: v }, v)));
  select.value = state.filters[section.name][field] || "";
  select.addEventListener("change", () => {
    state.filters[section.name][field] = select.value;
    drawSections();
  });
  return select;
}

function drawSections() {
  const root = document.getElementById("sections");
  root.replaceChildren();
  const nav = document.getElementById("nav");
  nav.replaceChildren();
  for (const s of DATA.sections) {
    const hits = s.rows.filter((r) => matches(s, r));
    nav.append(el("a", { href: "#" + s.name }, s.title + " ", el("span", { class: "count", id: "count-" + s.name }, String(hits.length)), "/" + s.rows.length));
    const head = el("tr", {}, s.columns.map((c) => el("th", {}, c)));
    const body = hits.slice(0, SHOWN).map((r) =>
      el("tr", { id: "row-" + s.name + "-" + r.__i, class: "row", on: { click: (ev) => {
        if (ev.target.tagName !== "A") location.hash = anchor(s.name, r[s.key]);
      } } }, s.columns.map((c) => cell(s, c, r[c]))));
    const more = hits.length > SHOWN ? el("p", { class: "more" }, `${hits.length - SHOWN} more: narrow the search`) : null;
    root.append(el("section", { id: "sec-" + s.name },
      el("h2", { id: s.name }, s.title, " ", el("small", {}, `${hits.length} of ${s.rows.length}`)),
      s.description ? el("p", { class: "about" }, s.description) : null,
      el("div", { class: "filters" }, (s.filters || []).map((f) => filterSelect(s, f))),
      el("table", {}, el("thead", {}, head), el("tbody", {}, body)), more));
  }
}

// The records of other sections that refer to this one, by their link fields.
function backrefs(section, id) {
  const out = [];
  for (const s of DATA.sections) {
    for (const [field, target] of Object.entries(s.links || {})) {
      if (target !== section.name) continue;
      const refs = s.rows.filter((r) => asList(r[field]).map(String).includes(String(id)));
      if (refs.length) out.push([s, field, refs]);
    }
  }
  return out;
}

function drawDetail() {
  const panel = document.getElementById("detail");
  const m = location.hash.match(/^#([^/]+)\/(.+)$/);
  const section = m && bySection[m[1]];
  const record = section && section.index.get(decodeURIComponent(m[2]));
  panel.hidden = !record;
  if (!record) return;
  const fields = Object.entries(record).filter(([k, v]) => !k.startsWith("__") && v !== null && v !== "" && !(Array.isArray(v) && !v.length));
  const rows = fields.map(([k, v]) => {
    const target = (section.links || {})[k];
    let value;
    if (target) value = asList(v).flatMap((id) => [...refLinks(target, id), " "]);
    else if (Array.isArray(v) && v.every((x) => typeof x !== "object")) value = el("ul", {}, v.map((x) => el("li", {}, String(x))));
    else value = el("div", { class: typeof v === "string" && v.length > 80 ? "long" : "" }, text(v));
    return [el("dt", {}, k), el("dd", { "data-field": k }, value)];
  });
  const back = backrefs(section, record[section.key]).map(([s, field, refs]) =>
    el("p", { class: "backref" }, `${s.title} (${field}, ${refs.length}): `,
      refs.slice(0, BACKREFS).flatMap((r) => [el("a", { href: anchor(s.name, r[s.key]), class: "ref" }, String(r[s.key])), " "])));
  panel.replaceChildren(el("div", {},
    el("h2", { id: "detail-title" }, `${section.title.replace(/s$/, "")} ${record[section.key]}`),
    el("dl", {}, rows.flat()),
    back.length ? el("h3", {}, "Referenced by") : null, back,
    el("p", {}, el("a", { href: "#", class: "close" }, "close"))));
  const row = document.getElementById("row-" + section.name + "-" + record.__i);
  document.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
  if (row) row.classList.add("selected");
  window.scrollTo(0, 0); // the panel sits right under the search box
}

function main() {
  prepare();
  document.title = DATA.title;
  document.getElementById("title").textContent = DATA.title;
  document.getElementById("subtitle").textContent = DATA.subtitle || "";
  const search = document.getElementById("search");
  state.q = (new URLSearchParams(location.search).get("q") || "").toLowerCase();
  search.value = state.q;
  search.addEventListener("input", () => {
    state.q = search.value.toLowerCase();
    const url = new URL(location.href);
    if (state.q) url.searchParams.set("q", state.q); else url.searchParams.delete("q");
    history.replaceState(null, "", url);
    drawSections();
    drawDetail();
  });
  window.addEventListener("hashchange", () => { drawSections(); drawDetail(); });
  drawSections();
  drawDetail();
}

main();
