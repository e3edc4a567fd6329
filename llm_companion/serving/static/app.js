// The chat page of `llm-companion serve`: streams replies from /v1/chat/completions (server-sent events),
// keeps the conversation, and stops generation by aborting the request (the server notices and stops).
// Every text from the user or the model goes into the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("form"), prompt = $("prompt"), sendBtn = $("send"), stopBtn = $("stop");
let history = [];          // [{role, content}] of finished turns
let controller = null;     // AbortController of the request in flight
let modelName = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function setBusy(busy) {
  sendBtn.disabled = busy;
  stopBtn.disabled = !busy;
  prompt.disabled = busy;
}

async function loadModel() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    modelName = h.model;
    $("model").textContent = "model: " + h.model;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

// Yield the JSON payloads of a server-sent-events body ("data: {...}" lines), until "[DONE]".
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function ask(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant streaming", "");
  const stats = $("stats");
  stats.textContent = "waiting for the model…";
  controller = new AbortController();
  setBusy(true);
  let reply = "", pieces = 0, usage = null, first = null, stopped = false, failed = false;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: modelName || undefined, messages: history, stream: true,
        stream_options: { include_usage: true },
        temperature: Number($("temperature").value), max_tokens: Number($("max_tokens").value),
      }),
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    for await (const ev of events(response)) {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) usage = ev.usage;
      for (const choice of ev.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          reply += piece;
          pieces += 1;
          bubble.textContent = reply;
          log.scrollTop = log.scrollHeight;
          const secs = (performance.now() - first) / 1000;
          stats.textContent = `${pieces} pieces` + (secs > 0 ? ` · ${(pieces / secs).toFixed(1)} pieces/s` : "");
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      stopped = true;
    } else {
      failed = true;
      addMessage("error", "Error: " + e.message);
    }
  } finally {
    bubble.classList.remove("streaming");
    controller = null;
    setBusy(false);
    prompt.focus();
  }
  const secs = (performance.now() - (first ?? started)) / 1000;
  if (usage) {
    const rate = usage.completion_tokens > 1 && secs > 0 ? (usage.completion_tokens - 1) / secs : null;
    stats.textContent = `${usage.prompt_tokens} prompt tokens · ${usage.completion_tokens} completion tokens` +
      (rate ? ` · ${rate.toFixed(1)} tokens/s` : "") +
      ` · first token after ${(((first ?? performance.now()) - started) / 1000).toFixed(2)} s`;
  } else if (stopped) {
    stats.textContent = `stopped after ${pieces} pieces`;
  }
  if (failed || (stopped && !reply)) {
    history.pop();       // no answer: forget the question too
    if (failed && !reply) bubble.remove();
    else if (!reply) bubble.textContent = "(stopped)";
  } else {
    history.push({ role: "assistant", content: reply });
  }
  if (stopped) bubble.dataset.stopped = "true";
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = "";
  ask(text);
});
prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
});
stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  log.replaceChildren();
  $("stats").textContent = "";
});
loadModel();
