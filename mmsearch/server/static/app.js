// mmsearch search page: plain JS, no dependencies, same-origin requests only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { file: null, key: sessionStorage.getItem("mmsearch-key") || "", blobs: [] };

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (resp.status === 401) {
    $("#key-row").hidden = false;
    throw new Error("This server needs an API key: enter it above.");
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (resp.status === 503) detail += " (server busy, try again in a moment)";
    throw new Error(detail);
  }
  return resp;
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// ---------------------------------------------------------------------------------------- set-up
async function loadInfo() {
  try {
    const stats = await (await api("/stats")).json();
    $("#index-info").textContent = `${stats.items} items · model ${stats.model.name}`;
    const filters = await (await api("/filters")).json();
    renderFilters(filters.supported ? filters.fields : {}, filters.supported ? filters.numeric || {} : {});
  } catch (err) {
    setStatus(err.message, true);
  }
}

function renderFilters(fields, numeric) {
  const box = $("#filter-fields");
  box.replaceChildren();
  // a numeric field: a min / max range (its values, sorted as text, would make a poor menu)
  for (const [name, range] of Object.entries(numeric)) {
    const group = document.createElement("span");
    group.className = "range";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `${name} range`);
    const caption = document.createElement("span");
    caption.textContent = name;
    group.append(caption);
    for (const [bound, op, word] of [["min", ">=", "from"], ["max", "<=", "to"]]) {
      const hint = document.createElement("span");
      hint.className = "muted";
      hint.setAttribute("aria-hidden", "true");
      hint.textContent = word;
      const input = document.createElement("input");
      input.type = "number";
      input.step = "any";
      input.id = `filter-${name}-${bound}`;
      input.className = "range-input";
      input.dataset.field = name;
      input.dataset.op = op;
      input.placeholder = String(range[bound]);
      input.setAttribute("aria-label", `${name} ${bound}`);
      group.append(hint, input);
    }
    box.append(group);
  }
  for (const [name, values] of Object.entries(fields)) {
    if (name in numeric) continue;
    const id = `filter-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name;
    const select = document.createElement("select");
    select.id = id;
    select.dataset.field = name;
    select.append(new Option("any", ""));
    for (const v of values) select.append(new Option(String(v), JSON.stringify(v)));
    box.append(label, select);
  }
  $("#filters").hidden = Object.keys(fields).length === 0 && Object.keys(numeric).length === 0;
}

function currentFilters() {
  // [field, op, value] triples: several conditions may name one field (a range)
  const out = [];
  for (const sel of document.querySelectorAll("#filter-fields select")) {
    if (sel.value) out.push([sel.dataset.field, "=", JSON.parse(sel.value)]);
  }
  for (const input of document.querySelectorAll("#filter-fields .range-input")) {
    if (input.value !== "" && Number.isFinite(Number(input.value))) {
      out.push([input.dataset.field, input.dataset.op, Number(input.value)]);
    }
  }
  return out.length ? JSON.stringify(out) : null;
}

// --------------------------------------------------------------------------------------- photo
function setPhoto(file) {
  const preview = $("#preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  state.file = file;
  preview.hidden = !file;
  $("#clear-photo").hidden = !file;
  if (file) {
    preview.src = URL.createObjectURL(file);
  } else {
    preview.removeAttribute("src");
    $("#photo").value = "";
  }
}

function wirePhoto() {
  $("#photo").addEventListener("change", (e) => {  // choosing a photo searches, as dropping one does
    setPhoto(e.target.files[0] || null);
    if (state.file) search();
  });
  $("#clear-photo").addEventListener("click", () => { setPhoto(null); $("#photo").focus(); });
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) { setPhoto(file); search(); } else setStatus("Drop an image file (JPEG, PNG, WebP ...).", true);
  });
}

// -------------------------------------------------------------------------------------- search
// ---------------------------------------------------------------------- more terms (query algebra)
let termCount = 0;

function addTerm(kind) {
  termCount += 1;
  const li = document.createElement("li");
  li.className = "term";
  li.dataset.kind = kind;
  const id = `term-${termCount}`;
  const label = document.createElement("label");
  label.className = "kind";
  label.htmlFor = id;
  label.textContent = kind === "text" ? "Text" : "Photo";
  const input = document.createElement("input");
  input.id = id;
  if (kind === "text") {
    input.type = "text";
    input.placeholder = "e.g. leather";
    input.maxLength = 1000;
    input.autocomplete = "off";
  } else {
    input.type = "file";
    input.accept = "image/*";
  }
  const thumb = document.createElement("img");
  thumb.alt = "";
  thumb.hidden = true;
  if (kind === "photo") {
    input.addEventListener("change", () => {
      if (thumb.src) URL.revokeObjectURL(thumb.src);
      const file = input.files[0];
      thumb.hidden = !file;
      if (file) thumb.src = URL.createObjectURL(file);
    });
  }
  const notLabel = document.createElement("label");
  const not = document.createElement("input");
  not.type = "checkbox";
  not.className = "not";
  not.addEventListener("change", () => li.classList.toggle("negative", not.checked));
  notLabel.append(not, " not");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", `Remove ${kind} term`);
  remove.addEventListener("click", () => { li.remove(); $("#q").focus(); });
  li.append(label, input, thumb, notLabel, remove);
  $("#terms").append(li);
  input.focus();
  return li;
}

function extraTerms() {
  const terms = [];
  for (const li of document.querySelectorAll("#terms .term")) {
    const input = li.querySelector("input[id]");
    const negative = li.querySelector(".not").checked;
    if (li.dataset.kind === "text") {
      const value = input.value.trim();
      if (value) terms.push({ kind: "text", value, negative });
    } else if (input.files[0]) {
      terms.push({ kind: "photo", value: input.files[0], negative });
    }
  }
  return terms;
}

function clearAll() {  // Esc and Reset: the query and its results go together
  resetForm();
  for (const src of state.blobs.splice(0)) URL.revokeObjectURL(src);
  $("#results").replaceChildren();
  setStatus("");
  $("#q").focus();
}

function resetForm() {
  $("#q").value = "";
  setPhoto(null);
  $("#terms").replaceChildren();
  $("#weight").value = "0.5";
  $("#weight-out").value = "0.50";
}

async function search() {
  const text = $("#q").value.trim();
  const extra = extraTerms();
  if (!text && !state.file && !extra.some((t) => !t.negative)) {
    setStatus(extra.length ? "Add a text or photo to look for, not only \"not\" terms." :
      "Type a text, choose a photo, or both.", true);
    $("#q").focus();
    return;
  }
  const form = new FormData();
  if (text) form.append("text", text);
  if (state.file) form.append("image", state.file, state.file.name || "photo");
  form.append("k", $("#k").value);
  if (text && state.file && !extra.length) form.append("image_weight", $("#weight").value);
  for (const t of extra) {
    const field = (t.negative ? "not_" : "") + (t.kind === "text" ? "text" : "image");
    if (t.kind === "text") form.append(field, t.value); else form.append(field, t.value, t.value.name || "photo");
  }
  const filters = currentFilters();
  if (filters) form.append("filters", filters);
  let label = [state.file ? "your photo" : "", text ? `"${text}"` : ""].filter(Boolean).join(" + ");
  for (const t of extra) {
    const what = t.kind === "text" ? `"${t.value}"` : `photo ${t.value.name}`;
    label += label || t.negative ? ` ${t.negative ? "−" : "+"} ${what}` : what;
  }
  await run("/search", form, `for ${label.trim()}`);
}

async function moreLike(hit) {
  resetForm();  // the results are no longer for what the form said
  const form = new FormData();
  form.append("k", $("#k").value);
  const filters = currentFilters();
  if (filters) form.append("filters", filters);
  const path = "/search/by-item/" + hit.id.split("/").map(encodeURIComponent).join("/");
  await run(path, form, `more like "${hit.title || hit.id}"`);
}

async function run(path, form, label) {
  setStatus("Searching…");
  $("#results").setAttribute("aria-busy", "true");
  try {
    const data = await (await api(path, { method: "POST", body: form })).json();
    await render(data.hits);
    setStatus(`${data.hits.length} results ${label} (${Math.round(data.took_ms)} ms)`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("#results").removeAttribute("aria-busy");
  }
}

async function thumbnailSrc(url) {
  if (!state.key) return url;  // plain <img src>; with a key the request needs the header
  const blob = await (await api(url)).blob();
  const src = URL.createObjectURL(blob);
  state.blobs.push(src);
  return src;
}

async function render(hits) {
  for (const src of state.blobs.splice(0)) URL.revokeObjectURL(src);
  const items = await Promise.all(hits.map(async (hit) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = hit.id;
    const img = document.createElement("img");
    img.alt = hit.title || hit.id;
    img.src = await thumbnailSrc(hit.thumbnail_url).catch(() => "");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = hit.title || hit.id.split("/").pop();  // untitled: the file name, not the whole path
    button.title = `${hit.title ? hit.title + "\n" : ""}${hit.id}\nClick: more like this`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${hit.score.toFixed(3)}`;
    button.setAttribute("aria-label", `${hit.title || hit.id}, score ${hit.score.toFixed(3)}: more like this`);
    button.append(img, title, score);
    button.addEventListener("click", () => moreLike(hit));
    li.append(button);
    return li;
  }));
  $("#results").replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------- start
document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("#weight").addEventListener("input", (e) => {
    $("#weight-out").value = Number(e.target.value).toFixed(2);
  });
  $("#save-key").addEventListener("click", () => {
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("mmsearch-key", state.key);
    $("#key-row").hidden = true;
    setStatus("");
    loadInfo();
  });
  wirePhoto();
  $("#add-text").addEventListener("click", () => addTerm("text"));
  $("#add-photo").addEventListener("click", () => addTerm("photo"));
  $("#reset").addEventListener("click", clearAll);
  document.addEventListener("keydown", keyboard);
  loadInfo();
});

function keyboard(e) {
  const typing = e.target.matches("input, select, textarea");
  if (e.key === "/" && !typing) {
    e.preventDefault();
    $("#q").focus();
  } else if (e.key === "Escape") {
    clearAll();
  } else if (e.altKey && (e.key === "t" || e.key === "p")) {
    e.preventDefault();
    addTerm(e.key === "t" ? "text" : "photo");
  } else if (e.target.matches(".hit") && ["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"].includes(e.key)) {
    const hits = [...document.querySelectorAll("#results .hit")];
    const i = hits.indexOf(e.target);
    const perRow = Math.max(1, Math.round($("#results").clientWidth / e.target.closest("li").offsetWidth));
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[e.key];
    const next = hits[Math.min(hits.length - 1, Math.max(0, i + step))];
    if (next) { e.preventDefault(); next.focus(); }
  }
}
