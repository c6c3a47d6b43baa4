// captioner demo page: pick a photo, POST /api/caption, show the caption and each word's attention.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the last API answer
let photo = null;     // its preview as an <img>

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function init() {
  const models = await getJSON("/api/models");
  for (const m of models.models) $("model").add(new Option(`${m.name} (${m.file})`, m.name));
  $("model").value = models.default;
  $("beam").add(new Option("", ""));  // the model's own beam size: not sent
  for (const b of models.beam_sizes) $("beam").add(new Option(String(b), String(b)));
  const ownBeam = () => {
    const m = models.models.find((m) => m.name === $("model").value);
    $("beam").options[0].text = `model's own (${m.beam_size})`;
  };
  ownBeam();
  $("model").addEventListener("change", ownBeam);
  const samples = await getJSON("/api/samples");
  for (const s of samples.samples) $("sample").add(new Option(s, s));
  $("file").addEventListener("change", () => { if ($("file").files.length) $("sample").value = ""; });
  $("sample").addEventListener("change", () => { if ($("sample").value) $("file").value = ""; });
  $("form").addEventListener("submit", (e) => { e.preventDefault(); caption(); });
}

async function caption() {
  const form = new FormData();
  if ($("file").files.length) form.append("file", $("file").files[0]);
  else if ($("sample").value) form.append("sample", $("sample").value);
  else return showError("Choose a photo to upload or a sample first.");
  form.append("model", $("model").value);
  if ($("beam").value) form.append("beam_size", $("beam").value);
  $("go").disabled = true;
  $("status").textContent = "captioning…";
  $("error").hidden = true;
  try {
    const response = await fetch("/api/caption", { method: "POST", body: form });
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) return showError(answer.error || `HTTP ${response.status}`);
    await show(answer);
  } catch (err) {
    showError(String(err));
  } finally {
    $("go").disabled = false;
    $("status").textContent = "";
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function show(answer) {
  current = answer;
  photo = new Image();
  photo.src = answer.preview;
  await photo.decode();
  $("caption").textContent = answer.caption || "(empty caption)";
  $("meta").textContent = `${answer.source} · ${answer.width}×${answer.height} px · model ${answer.model} ` +
    `(${answer.model_type}) · beam ${answer.beam_size} · log-prob ${answer.score.toFixed(2)} · ${answer.seconds} s`;
  $("hint").textContent = answer.attention
    ? (answer.locations ? "Hard attention: hover or click a word to see the location it used and its α map."
       : answer.looked ? "Hover or click a word to see where the model looked and how much (1 − β: the rest of " +
                         "its attention went to the language model's sentinel)."
       : "Hover or click a word to see where the model looked (its α map).")
    : `This model (${answer.model_type}) has no attention map: one image vector conditions every word.`;
  const words = $("words");
  words.replaceChildren();
  answer.tokens.forEach((token, i) => {
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = token;
    if (answer.looked) span.title = `looked at the image: 1 − β = ${answer.looked[i].toFixed(2)}`;
    span.dataset.index = String(i);
    if (answer.attention) {
      span.addEventListener("mouseenter", () => select(i));
      span.addEventListener("click", () => select(i));
    }
    words.appendChild(span);
  });
  $("result").hidden = false;
  draw(null);
}

function select(i) {
  document.querySelectorAll(".word").forEach((w) => w.classList.toggle("active", Number(w.dataset.index) === i));
  draw(i);
}

// The photo under a heat map of the chosen word's attention (blue: little, red: most). The g x g map is
// coloured on a tiny canvas and stretched with smoothing, which interpolates it over the photo.
function jet(v) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(x))));
  return [c(4 * v - 3), c(4 * v - 2), c(4 * v - 1)];
}

function draw(i) {
  const canvas = $("canvas");
  canvas.width = photo.naturalWidth;
  canvas.height = photo.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  if (i === null || !current.attention) return;
  const g = current.grid, alpha = current.attention[i];
  const peak = Math.max(...alpha) || 1;
  const small = document.createElement("canvas");
  small.width = g; small.height = g;
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(g, g);
  alpha.forEach((a, k) => {
    const [r, gr, b] = jet(a / peak);
    pixels.data.set([r, gr, b, 255], 4 * k);
  });
  sctx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.globalAlpha = 0.5;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
  if (current.locations) {  // hard attention: outline the location used for this word
    const loc = current.locations[i], cw = canvas.width / g, ch = canvas.height / g;
    ctx.strokeStyle = "#ffd84d";
    ctx.lineWidth = Math.max(3, canvas.width / 150);
    ctx.strokeRect((loc % g) * cw, Math.floor(loc / g) * ch, cw, ch);
  }
}

init().catch((err) => showError(`could not load the page's settings: ${err}`));
