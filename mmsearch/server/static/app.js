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
    renderFilters(filters.supported ? filters.fields : {});
  } catch (err) {
    setStatus(err.message, true);
  }
}

function renderFilters(fields) {
  const box = $("#filter-fields");
  box.replaceChildren();
  for (const [name, values] of Object.entries(fields)) {
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
  $("#filters").hidden = Object.keys(fields).length === 0;
}

function currentFilters() {
  const out = {};
  for (const sel of document.querySelectorAll("#filter-fields select")) {
    if (sel.value) out[sel.dataset.field] = JSON.parse(sel.value);
  }
  return Object.keys(out).length ? JSON.stringify(out) : null;
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
  $("#photo").addEventListener("change", (e) => setPhoto(e.target.files[0] || null));
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
async function search() {
  const text = $("#q").value.trim();
  if (!text && !state.file) {
    setStatus("Type a text, choose a photo, or both.", true);
    $("#q").focus();
    return;
  }
  const form = new FormData();
  if (text) form.append("text", text);
  if (state.file) form.append("image", state.file, state.file.name || "photo");
  form.append("k", $("#k").value);
  if (text && state.file) form.append("image_weight", $("#weight").value);
  const filters = currentFilters();
  if (filters) form.append("filters", filters);
  const what = [state.file ? "your photo" : "", text ? `"${text}"` : ""].filter(Boolean).join(" + ");
  await run("/search", form, `for ${what}`);
}

async function moreLike(hit) {
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
    button.title = "More like this";
    const img = document.createElement("img");
    img.alt = hit.title || hit.id;
    img.src = await thumbnailSrc(hit.thumbnail_url).catch(() => "");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = hit.title || hit.id;
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
  loadInfo();
});
