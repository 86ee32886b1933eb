// Polls /api/state once a second and redraws; no framework, nothing loaded from elsewhere.
// Data is only ever put into the page with textContent, never as HTML.
"use strict";
const CLASS_NAMES = ["Disturbed", "Merging", "Round Smooth", "In-between Round Smooth",
  "Cigar Shaped Smooth", "Barred Spiral", "Unbarred Tight Spiral", "Unbarred Loose Spiral",
  "Edge-on without Bulge", "Edge-on with Bulge"];
const seen = new Set();
let first = true;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function fmt(x, digits) {
  return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits);
}

function renderDevices(devices) {
  const box = document.getElementById("devices");
  box.replaceChildren();
  if (!devices.length) { box.append(el("p", "empty", "no device has reported yet")); return; }
  for (const d of devices) {
    const card = el("div", "device");
    card.dataset.device = d.device;
    const name = el("div", "name", d.device);
    name.append(el("span", "state " + d.state, d.state));
    card.append(name);
    const model = d.model ? `${d.model.name || "?"} ${d.model.precision || ""} ${d.model.backend || ""}` : "no model";
    card.append(el("div", "meta", model));
    card.append(el("div", "meta",
      `${fmt(d.fps, 1)} frames/s · outbox ${d.outbox_depth ?? "–"} · ${d.frames_out ?? "–"} classified`));
    card.append(el("div", "meta", "seen " + (d.last_seen || "never")));
    box.append(card);
  }
}

function renderWall(latest) {
  const box = document.getElementById("wall");
  box.replaceChildren();
  if (!latest.length) { box.append(el("p", "empty", "waiting for the first classification")); return; }
  for (const c of latest) {
    const key = c.device + "/" + c.id;
    const card = el("div", "card classification" + (c.uncertain ? " uncertain" : ""));
    if (!first && !seen.has(key)) card.classList.add("fresh");
    seen.add(key);
    card.dataset.id = c.id;
    card.title = `${c.device} · ${c.frame_ref} · ${c.classified_at}`;
    if (c.has_thumbnail) {
      const img = el("img");
      img.alt = c.label;
      img.src = `/thumbnails/${encodeURIComponent(c.device)}/${encodeURIComponent(c.id)}.jpg`;
      card.append(img);
    } else {
      card.append(el("div", "noimg", "no thumbnail"));
    }
    card.append(el("div", "label", c.label));
    card.append(el("div", "conf", `${(100 * c.confidence).toFixed(1)}% · ${c.device}`));
    box.append(card);
  }
}

function renderHistogram(hist) {
  const box = document.getElementById("histogram");
  box.replaceChildren();
  const counts = new Map(hist.map(h => [h.class_id, h.count]));
  const max = Math.max(1, ...hist.map(h => h.count));
  CLASS_NAMES.forEach((name, id) => {
    const n = counts.get(id) || 0;
    const row = el("div", "row");
    row.dataset.classId = id;
    row.append(el("span", "name", name));
    const bar = el("div", "bar");
    bar.style.width = (100 * n / max) + "%";
    const track = el("div", "track");
    track.append(bar);
    row.append(track);
    row.append(el("span", "n", n));
    box.append(row);
  });
}

function renderErrors(errors) {
  const box = document.getElementById("errors");
  box.replaceChildren();
  if (!errors.length) { box.append(el("li", "empty", "none")); return; }
  for (const e of errors) {
    const li = el("li", "error");
    li.append(el("span", "reason", e.reason), document.createTextNode(` ${e.device} · ${e.frame_ref}`));
    li.append(el("div", "meta", e.detail));
    box.append(li);
  }
}

async function poll() {
  try {
    const r = await fetch("/api/state", {cache: "no-store"});
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    const s = await r.json();
    renderDevices(s.devices);
    renderWall(s.latest);
    renderHistogram(s.histogram);
    renderErrors(s.errors);
    const t = s.totals;
    const totals = document.getElementById("totals");
    totals.replaceChildren();
    for (const [k, v] of [["classifications", t.classifications], ["errors", t.errors], ["stored aside", t.rejected]]) {
      totals.append(el("b", null, v), document.createTextNode(` ${k}   `));
    }
    document.getElementById("updated").textContent = new Date().toISOString();
    first = false;
  } catch (err) {
    document.getElementById("updated").textContent = "failed: " + err.message;
  }
}

poll();
setInterval(poll, 1000);
