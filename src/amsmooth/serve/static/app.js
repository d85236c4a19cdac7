// amsmooth serve page: the JSON API's three calls, a progress line polled from /status, nothing else.
"use strict";

const $ = (id) => document.getElementById(id);
const SIM_FULL = 0.3;            // |sim| at which the heatmap colour saturates (the legend's ends)
let info = null;
let busy = false;

function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(3) : x.toFixed(digits);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setBusy(on, text) {
  busy = on;
  $("status").classList.toggle("busy", on);
  $("status-text").textContent = text;
  $("run").disabled = on;
  $("certify").disabled = on;
}

async function pollStatus() {
  while (busy) {
    try {
      const s = await (await fetch("/status")).json();
      if (busy && s.progress) {
        const p = s.progress;
        const waiting = s.pending > 1 ? ` · ${s.pending - 1} waiting` : "";
        $("status-text").textContent = `${p.task}: ${p.done}/${p.total} · ${p.elapsed_s.toFixed(1)} s${waiting}`;
      }
    } catch (e) { /* the next poll will tell */ }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function number(id, name, integer = false) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const x = Number(raw);
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x))) {
    throw new Error(`${name} must be ${integer ? "a whole number" : "a number"}, got "${raw}"`);
  }
  return x;
}

function smoothingBody() {
  const concepts = [...document.querySelectorAll("#concepts input:checked")].map((c) => c.value);
  if (concepts.length === 0) throw new Error("pick at least one concept");
  return {
    prompt: $("prompt").value, sigma0: number("sigma0", "σ0"), k: number("k", "k"),
    global: $("global").checked, concepts,
  };
}

function colour(sim) {
  const t = Math.max(-1, Math.min(1, sim / SIM_FULL));
  const [r, g, b] = t >= 0 ? [214, 39, 40] : [59, 110, 196];
  const a = Math.abs(t);
  const mix = (c) => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

function renderRelevance(rel) {
  const sigma0 = rel.config.sigma0;
  const box = $("heatmap");
  box.replaceChildren();
  let lastWord = -1;
  for (const t of rel.tokens) {
    const span = document.createElement("span");
    span.className = "tok" + (t.high ? " high" : "") + (t.word_index !== lastWord && lastWord >= 0 ? " word-start" : "");
    lastWord = t.word_index;
    span.textContent = t.token.replace(/<\/w>$/, "");
    span.style.background = colour(t.sim);
    span.tabIndex = 0;
    const ratio = sigma0 > 0 ? ` = ${(t.sigma / sigma0).toFixed(2)}·σ0` : "";
    const glb = t.sim_global === null ? "" : `, global ${fmt(t.sim_global, 3)}`;
    span.dataset.tip = `${t.word} · sim ${fmt(t.sim, 3)} (local ${fmt(t.sim_local, 3)}${glb})\nσ ${fmt(t.sigma, 5)}${ratio}`;
    span.setAttribute("aria-label", span.dataset.tip);
    box.appendChild(span);
  }
  if (rel.tokens.length === 0) box.textContent = "(no prompt tokens)";
  $("dropped").hidden = !rel.dropped;
  $("dropped").textContent = rel.dropped ? `truncated by the encoder; dropped: ${rel.dropped}` : "";
  $("relevance-section").hidden = false;
}

function renderImages(gen) {
  for (const name of ["none", "ams"]) {
    const img = gen.images.find((i) => i.defense === name);
    const fig = $(`fig-${name}`);
    fig.hidden = !img;
    if (!img) continue;
    $(`img-${name}`).src = `data:image/png;base64,${img.png_base64}`;
    const label = name === "ams" ? "defended (AMS)" : "undefended";
    fig.querySelector("figcaption").innerHTML = "";
    const b = document.createElement("b");
    b.textContent = label;
    fig.querySelector("figcaption").append(b,
      ` · seed ${gen.seed} · ${img.width}×${img.height} px · ${img.timings.total_s.toFixed(2)} s` +
      (name === "ams" ? ` (text stage ${(img.timings.text_s * 1000).toFixed(0)} ms)` : ""));
  }
  const d = gen.difference;
  $("difference").textContent = d ? `defended vs undefended: mean |Δ| = ${d.mean_abs.toFixed(2)} of 255 per ` +
    `colour value; ${(100 * d.changed_fraction).toFixed(1)} % of pixels changed` : "";
  $("images-section").hidden = false;
}

function renderCertificate(c) {
  let summary;
  if (c.status === "certified") {
    summary = `bound Σξ = ${fmt(c.bound)} against ‖E0.5(y)‖² = ${fmt(c.median_norm_sq)} (ratio ${fmt(c.ratio)}); ` +
      `max per-coordinate change ${fmt(c.max_coordinate_deviation)}; ρ′ = ${c.rho}, n = ${c.n}, α = ${c.alpha}, ` +
      `${c.seconds.toFixed(2)} s. Typical distance between two token embeddings: ${fmt(c.typical_token_distance)}.`;
  } else if (c.status === "too-few-samples") {
    const need = c.min_samples === null ? "no n suffices" : `need n ≥ ${c.min_samples}`;
    summary = `no bound: n = ${c.n} is too few for ρ′ = ${c.rho} at α = ${c.alpha} (${need}).`;
  } else {
    summary = "no certificate: σ ≡ 0 (no noised token), the smoothed output is T(y) itself.";
  }
  $("cert-summary").textContent = summary;
  const body = $("cert-table").querySelector("tbody");
  body.replaceChildren();
  for (const t of c.tokens) {
    const tr = document.createElement("tr");
    for (const v of [t.word, t.token.replace(/<\/w>$/, ""), fmt(t.sigma, 5), fmt(t.radius, 5),
                     fmt(t.nearest_token_distance, 4)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("certificate-section").hidden = false;
}

async function task(label, work) {
  if (busy) return;
  showError("");
  setBusy(true, `${label}…`);
  const polling = pollStatus();
  const started = performance.now();
  try {
    await work();
    setBusy(false, `done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    setBusy(false, "failed");
    showError(e.message);
  }
  await polling;
}

async function generate() {
  await task("scoring tokens", async () => {
    const body = smoothingBody();
    const seed = number("seed", "seed", true);
    const gen = { ...body, seed, n: number("n", "n", true), steps: number("steps", "steps", true),
                  guidance: number("guidance", "guidance") };
    renderRelevance(await post("/relevance", body));
    $("status-text").textContent = "generating…";
    renderImages(await post("/generate", gen));
  });
}

async function certify() {
  await task("certifying", async () => {
    const body = { ...smoothingBody(), seed: number("seed", "seed", true), rho: number("rho", "ρ′"),
                   samples: number("samples", "samples", true), alpha: number("alpha", "α") };
    renderCertificate(await post("/certify", body));
  });
}

async function init() {
  try {
    info = await (await fetch("/info")).json();
  } catch (e) {
    showError("cannot reach the server");
    return;
  }
  const c = info.config;
  $("model").textContent = `model ${info.model}${info.unet ? " + " + info.unet : ""}`;
  $("sigma0").value = c.sigma0;
  $("k").value = c.k;
  $("n").value = c.n;
  $("global").checked = c.use_global;
  $("steps").value = info.steps;
  $("guidance").value = info.guidance;
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("seed").max = info.limits.max_seed;
  for (const name of info.concepts) {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = c.concepts.includes(name);
    label.append(box, ` ${name}`);
    $("concepts").appendChild(label);
  }
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
$("certify").addEventListener("click", certify);
init();
