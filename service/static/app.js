// The search page: upload or drop an image, or click one, and see its nearest neighbours.
// Plain JS against the /v1 API; every answer that is not 2xx carries {"detail", "code"}.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { maxK: 100, keyForReads: false, classes: null, searches: 0, last: null, canExplain: false, answer: null };

function apiKey() {
  return $("apikey").value.trim();
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${response.status}`;
    throw new Error(detail);
  }
  return body;
}

// <img> cannot send a header: when a key is needed for reads, fetch the picture and show a blob.
async function showImage(img, url) {
  if (!state.keyForReads) {
    img.src = url;
    return;
  }
  try {
    const response = await fetch(url, { headers: headers() });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch (e) {
    /* the card stays without a picture */
  }
}

// Where a picture came from: a file's name (its folders are in the tooltip) or a data set item
// (cifar10:test:17); the id only when nothing else is known.
function sourceText(item) {
  if (!item.source) return `#${item.id}`;
  return item.source.split("/").pop() || item.source;
}

// A class name reads better than a number: the one stored with the item (infomax index build keeps
// it), else the name of its label in the index's data set (/v1/info), else the bare label.
function className(item) {
  if (item.meta && typeof item.meta.class === "string") return item.meta.class;
  if (!Number.isInteger(item.label)) return null;
  return labelName(item.label);
}

function labelName(label) {
  const names = state.classes;
  if (names && label >= 0 && label < names.length) return names[label];
  return `label ${label}`;
}

// The search filter of the controls (POST /v1/search's "filter"): a class (label) and a folder
// (the start of the source: a file's relative path); null when neither is set.
function currentFilter() {
  const filter = {};
  const label = $("filter-class").value;
  if (label !== "") filter.label = Number(label);
  const folder = $("filter-folder").value.trim();
  if (folder) filter.source = { prefix: folder };
  return Object.keys(filter).length ? filter : null;
}

function filterText(filter) {
  const parts = [];
  if (filter && "label" in filter) parts.push(`class ${labelName(filter.label)}`);
  if (filter && filter.source) parts.push(`folder ${filter.source.prefix}`);
  return parts.join(", ");
}

function card(item, withScore) {
  const fig = document.createElement("figure");
  fig.className = "card" + (withScore ? " hit" : " sample");
  fig.tabIndex = 0;
  fig.dataset.id = String(item.id);
  const img = document.createElement("img");
  img.alt = `item ${item.id}`;
  img.loading = "lazy";
  showImage(img, item.image_url);
  const pic = document.createElement("div");
  pic.className = "pic";
  pic.append(img);
  const caption = document.createElement("figcaption");
  if (withScore) {
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = item.score.toFixed(3);
    caption.append(score);
  }
  const source = document.createElement("div");
  source.className = "source";
  source.textContent = sourceText(item);
  caption.append(source);
  const cls = className(item);
  if (cls) {
    const line = document.createElement("div");
    line.className = "class";
    line.textContent = cls;
    caption.append(line);
  }
  caption.title = `item #${item.id}` + (item.source ? ` · ${item.source}` : "") + (cls ? ` · ${cls}` : "");
  fig.append(pic, caption);
  const go = () => searchById(item.id);
  fig.addEventListener("click", go);
  fig.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
  return fig;
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isFinite(value) ? Math.min(Math.max(value, 1), state.maxK) : 12;
}

function showResults(answer, started, filter) {
  const grid = $("results");
  grid.replaceChildren(...answer.neighbors.map((n) => card(n, true)));
  state.answer = answer;
  drawHeatMaps();
  if (!answer.neighbors.length) {
    grid.innerHTML = filter ? '<p class="muted">No image matches the filter.</p>' : '<p class="muted">The index is empty.</p>';
  }
  const ms = Math.round(performance.now() - started);
  const all = filter && answer.neighbors.length < answer.k ? " (all that match)" : "";
  setStatus(`${answer.neighbors.length} neighbours${all} in ${ms} ms` + (filter ? ` · only ${filterText(filter)}` : ""));
}

function showQuery(url, caption, isBlob) {
  $("query").hidden = false;
  if (isBlob) $("query-img").src = url;
  else showImage($("query-img"), url);
  $("query-caption").textContent = caption;
}

async function searchFile(file) {
  if (!file) return;
  const search = ++state.searches;
  state.last = { file };
  showQuery(URL.createObjectURL(file), file.name, true);
  setStatus("searching…");
  const started = performance.now();
  const filter = currentFilter();
  const explain = explainWanted();
  state.lastAsk = askKey(filter, explain);
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(k()));
  if (filter) form.append("filter", JSON.stringify(filter));
  if (explain) form.append("explain", "true");
  try {
    const answer = await api("/v1/search", { method: "POST", body: form });
    if (search !== state.searches) return; // a newer search (another filter, another query) has begun
    showResults(answer, started, filter);
  } catch (e) {
    state.answer = null;
    $("results").replaceChildren();
    setStatus(e.message, true);
  }
}

async function searchById(id) {
  const search = ++state.searches;
  state.last = { id };
  showQuery(`/v1/items/${id}/image`, `item #${id}`, false);
  setStatus("searching…");
  const started = performance.now();
  const filter = currentFilter();
  const explain = explainWanted();
  state.lastAsk = askKey(filter, explain);
  try {
    const ask = { id: id, k: k() };
    if (filter) ask.filter = filter;
    if (explain) ask.explain = true;
    const body = JSON.stringify(ask);
    const duplicates = api(`/v1/items/${id}/duplicates`).catch(() => null);
    const answer = await api("/v1/search", { method: "POST", body, headers: { "Content-Type": "application/json" } });
    if (search !== state.searches) return; // a newer search (another filter, another query) has begun
    showResults(answer, started, filter);
    markDuplicates(id, await duplicates, search);
  } catch (e) {
    state.answer = null;
    $("results").replaceChildren();
    setStatus(e.message, true);
  }
}

// The item's near-duplicates (GET /v1/items/{id}/duplicates, the server's default threshold):
// their result cards get a "near-duplicate" mark, the query's caption their number. Skipped when
// a newer search has replaced the results meanwhile, or when the answer did not come.
function markDuplicates(id, answer, search) {
  if (!answer || search !== state.searches) return;
  const ids = new Set(answer.duplicates.map((d) => d.id));
  for (const fig of document.querySelectorAll("#results .hit")) {
    if (!ids.has(Number(fig.dataset.id))) continue;
    fig.classList.add("dup");
    const mark = document.createElement("div");
    mark.className = "dup-mark";
    mark.textContent = "near-duplicate";
    fig.querySelector("figcaption").prepend(mark);
  }
  const n = answer.duplicates.length;
  if (n) {
    $("query-caption").textContent = `item #${id} · ${n}${answer.truncated ? "+" : ""} near-duplicate${n === 1 ? "" : "s"}` +
      ` (cosine ≥ ${answer.threshold})`;
  }
}

async function loadSample() {
  try {
    const answer = await api("/v1/items/sample?n=24");
    $("sample").replaceChildren(...answer.items.map((item) => card(item, false)));
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    state.maxK = info.max_k;
    state.keyForReads = info.key_required_for_reads;
    state.classes = Array.isArray(info.classes) ? info.classes : null;
    $("k").max = String(info.max_k);
    setUpClassFilter(info.filters ? info.filters.labels : []);
    setUpExplain(info);
    $("info").textContent = `${info.items} images · model ${info.model.slice(0, 12)} · ` +
      `${info.z_dim}-d ${info.output === "local" ? "local feature maps" : "codes"} · ${info.index_factory}` +
      `${info.read_only ? " · read-only" : ""}`;
    return true;
  } catch (e) {
    $("info").textContent = "";
    setStatus(e.message, true);
    return false;
  }
}

// One option per label the index holds (GET /v1/info), named as the pictures' captions name them.
function setUpClassFilter(labels) {
  const select = $("filter-class");
  const chosen = select.value;
  select.replaceChildren(select.options[0]);
  for (const label of labels) {
    const option = document.createElement("option");
    option.value = String(label);
    option.textContent = labelName(label);
    select.append(option);
  }
  select.value = labels.includes(Number(chosen)) && chosen !== "" ? chosen : "";
  $("filter-class-label").hidden = labels.length === 0;
}

// A changed filter (or "why?" turned on) searches the last query again.
function rerun() {
  if (!state.last || askKey(currentFilter(), explainWanted()) === state.lastAsk) return;
  if (state.last.file) searchFile(state.last.file);
  else searchById(state.last.id);
}

// ----------------------------------------------------------------- why two images match
// With "why?" on, searches ask for explain (POST /v1/search): each neighbour comes back with the
// model's local critic scores of the query's code at every position of its local feature map
// (h x w, top row first). Each map is drawn as an h x w canvas, one pixel per position, stretched
// smoothly over the part of the picture the model sees (the central square: pictures are resized
// by their shorter side and centre-cropped) in the colours of the legend.

// magma at 9 points: dark = the lowest score, bright = the highest (luminance rises throughout)
const RAMP = [[0, 0, 4], [29, 17, 71], [81, 18, 124], [131, 38, 129], [183, 55, 121], [231, 82, 99],
  [252, 137, 97], [254, 196, 136], [252, 253, 191]];

function rampColour(t) {
  const x = Math.min(Math.max(Number.isFinite(t) ? t : 0.5, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  return RAMP[i].map((c, j) => Math.round(c + f * (RAMP[i + 1][j] - c)));
}

function askKey(filter, explain) {
  return JSON.stringify({ filter, explain });
}

function explainWanted() {
  return state.canExplain && $("explain").checked;
}

function answerExplained(answer) {
  return answer.neighbors.some((n) => "explain" in n);
}

// /v1/info says whether the model can explain (it carries its local critic); if not, the toggle is
// disabled and the hint says why.
function setUpExplain(info) {
  state.canExplain = Boolean(info.explain);
  const box = $("explain");
  box.disabled = !state.canExplain;
  if (!state.canExplain) box.checked = false;
  $("explain-label").classList.toggle("off", !state.canExplain);
  const hint = $("explain-hint");
  hint.hidden = state.canExplain;
  hint.textContent = state.canExplain ? "" : "This model cannot show why: " +
    (info.explain_unavailable || "it carries no local critic (trained with beta 0).");
  $("explain-label").title = state.canExplain
    ? `colour each result by how well each of its regions matches the query (${info.explain_critic} critic)`
    : hint.textContent;
  showExplainControls();
}

function showExplainControls() {
  $("explain-legend").hidden = !explainWanted();
}

function drawHeatMaps() {
  const grid = $("results");
  const answer = state.answer;
  const on = explainWanted() && answer && answerExplained(answer);
  grid.classList.toggle("explained", Boolean(on));
  if (!on) return;
  const maps = answer.neighbors.map((n) => n.explain).filter((m) => m);
  const all = $("explain-scale").value === "all";
  const lo = all ? Math.min(...maps.map((m) => m.min)) : null;
  const hi = all ? Math.max(...maps.map((m) => m.max)) : null;
  const cards = grid.querySelectorAll(".hit");
  answer.neighbors.forEach((n, i) => {
    const fig = cards[i];
    if (!fig || Number(fig.dataset.id) !== n.id) return;
    fig.querySelectorAll("canvas.heat, .why-none").forEach((e) => e.remove());
    if (!n.explain) {
      const none = document.createElement("div");
      none.className = "why-none";
      none.textContent = "why: no stored picture";
      fig.querySelector("figcaption").append(none);
      return;
    }
    const pic = fig.querySelector(".pic");
    pic.append(heatCanvas(n.explain, all ? lo : n.explain.min, all ? hi : n.explain.max, pic.querySelector("img")));
    pic.title = `where this picture agrees with the query: critic scores from ${n.explain.min.toFixed(3)} ` +
      `(dark) to ${n.explain.max.toFixed(3)} (bright)` + (all ? ", coloured on the scale of all results" : "") +
      "; hover to see the picture";
  });
}

function heatCanvas(map, lo, hi, img) {
  const canvas = document.createElement("canvas");
  canvas.className = "heat";
  canvas.width = map.w;
  canvas.height = map.h;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(map.w, map.h);
  const span = hi - lo;
  map.scores.forEach((row, y) => row.forEach((s, x) => {
    const [r, g, b] = rampColour(span > 0 ? (s - lo) / span : 0.5);
    pixels.data.set([r, g, b, 255], 4 * (y * map.w + x));
  }));
  ctx.putImageData(pixels, 0, 0);
  const fit = () => placeOnSeenPart(canvas, img);
  if (img.complete && img.naturalWidth) fit();
  else img.addEventListener("load", fit, { once: true });
  return canvas;
}

// The <img> shows the whole picture (object-fit: contain in a square box); the model saw its
// central square. Cover exactly that square.
function placeOnSeenPart(canvas, img) {
  const w = img.naturalWidth, h = img.naturalHeight;
  if (!w || !h) return;
  const side = (100 * Math.min(w, h)) / Math.max(w, h);
  canvas.style.width = canvas.style.height = `${side}%`;
  canvas.style.left = canvas.style.top = `${(100 - side) / 2}%`;
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
}

async function refresh() {
  if (await loadInfo()) await loadSample();
}

function start() {
  // sessionStorage: the key lives as long as the tab, never in a cookie or the URL
  $("apikey").value = sessionStorage.getItem("infomax-api-key") || "";
  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem("infomax-api-key", apiKey());
    setStatus("");
    refresh();
  });
  setUpDrop();
  $("reshuffle").addEventListener("click", loadSample);
  $("filter-class").addEventListener("change", rerun);
  $("filter-folder").addEventListener("change", rerun);
  $("filter-folder").addEventListener("search", rerun); // Enter, or the clear button
  $("explain").addEventListener("change", () => {
    showExplainControls();
    if (explainWanted() && state.answer && !answerExplained(state.answer)) rerun();
    else drawHeatMaps();
  });
  $("explain-scale").addEventListener("change", drawHeatMaps);
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
