// /docs: Swagger UI over this server's /openapi.json, all of it served by this server.
// When keys are on, /openapi.json needs one: the page asks for it, fetches the description
// with it and hands it to Swagger UI's "Authorize" (not persisted), so "Try it out" sends it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const EXAMPLE_TEXTS = [
    "The food was delicious and the waiter was friendly.",
    "Embeddings map text to vectors.",
  ];

  function headers(key) {
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function askForKey(message) {
    $("key-box").hidden = false;
    $("key-error").textContent = message || "";
    $("key-error").hidden = !message;
    $("key").focus();
  }

  // The description's example names text-embedding-3-small; "Try it out" should start from a
  // model this server really serves.
  async function servedModel(key) {
    try {
      const resp = await fetch("/v1/models", { headers: headers(key), cache: "no-store" });
      if (!resp.ok) return null;
      const data = (await resp.json()).data;
      return data.length ? data[0].id : null;
    } catch (_) {
      return null;
    }
  }

  async function load(key) {
    let resp;
    try {
      resp = await fetch("/openapi.json", { headers: headers(key), cache: "no-store" });
    } catch (err) {
      $("docs-error").textContent = `The server did not answer: ${err.message}`;
      $("docs-error").hidden = false;
      return;
    }
    if (resp.status === 401) {
      askForKey(key ? "That key was refused." : "");
      return;
    }
    if (!resp.ok) {
      $("docs-error").textContent = `GET /openapi.json: ${resp.status} ${resp.statusText}`;
      $("docs-error").hidden = false;
      return;
    }
    const spec = await resp.json();
    const model = await servedModel(key);
    const body = spec.paths?.["/v1/embeddings"]?.post?.requestBody?.content?.["application/json"];
    if (body) body.example = { ...(model ? { model } : {}), input: EXAMPLE_TEXTS };
    $("key-box").hidden = true;
    const ui = SwaggerUIBundle({
      spec,
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // Its default asks validator.swagger.io about the spec: nothing leaves this server.
      validatorUrl: null,
      persistAuthorization: false,
      displayRequestDuration: true,
      defaultModelsExpandDepth: 0,
      docExpansion: "list",
    });
    if (key) ui.preauthorizeApiKey("bearer", key);
    document.body.dataset.docs = "loaded";
  }

  const loadWithKey = () => load($("key").value.trim());
  $("key-load").addEventListener("click", loadWithKey);
  $("key").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") loadWithKey();
  });
  load("");
})();
