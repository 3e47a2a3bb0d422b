// The playground: POST /v1/embeddings (base64, as the openai client asks), then cosine
// similarities computed here in float64 from the float32 vectors the server sent.
// The API key lives only in the input field and `authHeaders`' reading of it: never in the
// address, storage or a cookie.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"),
    modelNote: $("model-note"),
    keyRow: $("key-row"),
    key: $("key"),
    queries: $("queries"),
    documents: $("documents"),
    embed: $("embed"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    heatmap: $("heatmap"),
    docKey: $("doc-key"),
    ranking: $("ranking"),
  };
  const TOP = 5;

  function authHeaders() {
    const key = ui.key.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  async function apiError(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
    } catch (_) {
      // Not our JSON (a proxy's page): the status line says enough.
    }
    return `${resp.status} ${resp.statusText}`;
  }

  function needKey(refused) {
    ui.keyRow.hidden = false;
    ui.modelNote.textContent = refused
      ? "That key was refused; models are listed once it is accepted."
      : "Enter the API key to list the models.";
  }

  async function loadModels() {
    let resp;
    try {
      resp = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
    } catch (err) {
      ui.modelNote.textContent = `The server did not answer: ${err.message}`;
      return;
    }
    if (resp.status === 401) {
      needKey(ui.key.value.trim() !== "");
      return;
    }
    if (!resp.ok) {
      ui.modelNote.textContent = await apiError(resp);
      return;
    }
    const previous = ui.model.value;
    const ids = (await resp.json()).data.map((m) => m.id);
    ui.model.replaceChildren(
      ...ids.map((id) => {
        const opt = document.createElement("option");
        opt.value = opt.textContent = id;
        return opt;
      }),
    );
    if (ids.includes(previous)) ui.model.value = previous;
    ui.modelNote.textContent = ids.length ? "" : "This server serves no model.";
    document.body.dataset.models = "loaded";
  }

  function lines(textarea) {
    return textarea.value
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "");
  }

  // Little-endian float32, as OpenAI defines base64 embeddings.
  function decode(b64) {
    const bin = atob(b64);
    const view = new DataView(new ArrayBuffer(bin.length));
    for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
    const out = new Float64Array(bin.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }

  function cosine(a, b) {
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    return na && nb ? dot / Math.sqrt(na * nb) : 0;
  }

  // ColorBrewer's RdBu, blue for -1, near-white for 0, red for 1.
  const RAMP = [
    [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
    [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43],
  ];

  function paint(el, value) {
    const t = (Math.max(-1, Math.min(1, value)) + 1) / 2 * (RAMP.length - 1);
    const i = Math.min(Math.floor(t), RAMP.length - 2);
    const f = t - i;
    const rgb = RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f));
    el.style.background = `rgb(${rgb.join(",")})`;
    el.style.color = Math.abs(value) > 0.55 ? "#fff" : "#1d2430";
  }

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function score(value) {
    return value.toFixed(3);
  }

  function render(rows, cols, sims, selfPairs) {
    const head = document.createElement("tr");
    head.append(cell("th", ""));
    cols.forEach((doc, j) => {
      const th = cell("th", `D${j + 1}`);
      th.title = doc;
      th.scope = "col";
      head.append(th);
    });
    const body = rows.map((query, i) => {
      const tr = document.createElement("tr");
      tr.dataset.q = i;
      const th = cell("th", query, "row");
      th.title = query;
      th.scope = "row";
      tr.append(th);
      cols.forEach((_, j) => {
        const td = cell("td", score(sims[i][j]));
        td.dataset.q = i;
        td.dataset.d = j;
        td.dataset.cos = sims[i][j];
        td.title = `${query}\n${cols[j]}\ncosine ${sims[i][j]}`;
        paint(td, sims[i][j]);
        tr.append(td);
      });
      return tr;
    });
    ui.heatmap.replaceChildren(head, ...body);
    ui.docKey.replaceChildren(...cols.map((doc) => cell("li", doc)));

    ui.ranking.replaceChildren(
      ...rows.map((query, i) => {
        const section = document.createElement("section");
        section.dataset.q = i;
        section.append(cell("h3", query));
        const order = cols
          .map((_, j) => j)
          .filter((j) => !(selfPairs && i === j))
          .sort((a, b) => sims[i][b] - sims[i][a])
          .slice(0, TOP);
        const ol = document.createElement("ol");
        for (const j of order) {
          const li = document.createElement("li");
          li.dataset.d = j;
          li.dataset.cos = sims[i][j];
          const badge = cell("span", score(sims[i][j]), "score");
          paint(badge, sims[i][j]);
          li.append(badge, cell("span", cols[j], "doc"));
          ol.append(li);
        }
        section.append(ol);
        return section;
      }),
    );
  }

  async function run() {
    showError("");
    const queries = lines(ui.queries);
    const docs = lines(ui.documents);
    if (!docs.length) {
      showError("Type at least one document (one per line).");
      return;
    }
    // No queries: every document against every other.
    const selfPairs = queries.length === 0;
    const rows = selfPairs ? docs : queries;
    const inputs = selfPairs ? docs : queries.concat(docs);
    const body = { input: inputs, encoding_format: "base64" };
    if (ui.model.value) body.model = ui.model.value;

    ui.embed.disabled = true;
    ui.status.textContent = "Embedding…";
    document.body.dataset.state = "busy";
    try {
      const start = performance.now();
      const resp = await fetch("/v1/embeddings", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
      const payload = resp.ok ? await resp.json() : null;
      const ms = performance.now() - start;
      if (!resp.ok) {
        if (resp.status === 401) needKey(ui.key.value.trim() !== "");
        showError(await apiError(resp));
        ui.status.textContent = "";
        document.body.dataset.state = "error";
        return;
      }
      const vectors = payload.data
        .slice()
        .sort((a, b) => a.index - b.index)
        .map((d) => decode(d.embedding));
      const docVectors = selfPairs ? vectors : vectors.slice(queries.length);
      const rowVectors = selfPairs ? vectors : vectors.slice(0, queries.length);
      const sims = rowVectors.map((q) => docVectors.map((d) => cosine(q, d)));
      render(rows, docs, sims, selfPairs);
      $("stat-model").textContent = payload.model;
      $("stat-texts").textContent = inputs.length;
      $("stat-tokens").textContent = payload.usage.prompt_tokens;
      $("stat-dims").textContent = vectors.length ? vectors[0].length : 0;
      $("stat-latency").textContent = `${ms.toFixed(1)} ms`;
      $("stat-latency").title = "round trip from this page, decoding included";
      ui.results.hidden = false;
      ui.status.textContent = "";
      document.body.dataset.state = "done";
    } catch (err) {
      showError(`The request failed: ${err.message}`);
      ui.status.textContent = "";
      document.body.dataset.state = "error";
    } finally {
      ui.embed.disabled = false;
    }
  }

  ui.embed.addEventListener("click", run);
  for (const box of [ui.queries, ui.documents]) {
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        run();
      }
    });
  }
  ui.key.addEventListener("change", loadModels);
  ui.key.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") loadModels();
  });
  loadModels();
})();
