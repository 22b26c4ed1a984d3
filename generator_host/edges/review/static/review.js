// The review page: renders the host's state (pushed over /ws) and posts clicks to /api.
// Plain DOM code, no framework and no build step. Chat text is only ever set as
// textContent, never as HTML. Tiles load blurred from the host; a click loads that one
// tile unblurred (the host serves both only to this authenticated page).
"use strict";

const revealed = new Set(); // "entry/tile" keys the reviewer clicked open
const images = new Map(); // src -> <img>, so a re-render does not reload pictures
const drafts = new Map(); // entry id -> the reject reason being typed (kept across pushes)
let typingIn = null; // the entry whose reason field has the focus
let state = null;
let closed = false;
let ws = null;

if (location.search.includes("key=")) {
  history.replaceState(null, "", "/"); // the secret now lives in an HttpOnly cookie
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function img(src, alt) {
  let node = images.get(src);
  if (!node) {
    node = el("img", { src, alt });
    node.addEventListener("load", () => {
      node.dataset.loaded = String(performance.timeOrigin + performance.now());
    });
    images.set(src, node);
  }
  return node;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const text = await response.text();
    note(`${response.status}: ${text.slice(0, 200)}`);
  }
  return response;
}

function act(action, extra = {}) {
  return post("/api/action", { action, ...extra });
}

function note(text) {
  document.getElementById("status").textContent = text;
}

function banner(text) {
  const node = document.getElementById("banner");
  node.textContent = text;
  node.hidden = false;
}

function signed(value) {
  return `${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
}

function scoreText(safety) {
  if (!safety) return "no safety scores";
  // why the tile is flagged or not, in the host's words (review/state.py summarize): the
  // image's verdict, or "the prompt was too close to ..." when only the prompt was
  let text = safety.why;
  // the streamer's categories (gore, violence, ...) and the prompt's scores, when kept
  const list = (items) => items.map((c) => `${c.name} ${signed(c.score)}`).join(", ");
  if (safety.categories && safety.categories.length) text += `; categories ${list(safety.categories)}`;
  if (safety.prompt && safety.prompt.length) text += `; prompt ${list(safety.prompt)}`;
  return text;
}

function alarming(safety) {
  return Boolean(safety && (safety.flagged || (safety.prompt_flagged || []).length));
}

function heldCard(entry, mayReview) {
  const cols = Math.ceil(Math.sqrt(entry.count));
  const tiles = el("div", { class: "tiles" });
  tiles.style.setProperty("--cols", String(cols)); // CSSOM: the CSP allows no inline style
  for (const tile of entry.tiles || []) {
    const key = `${entry.id}/${tile.n}`;
    const open = revealed.has(key);
    const view = open ? "raw" : "blur";
    const picture = img(`/api/tile/${entry.id}/${tile.n}?view=${view}`, `tile ${tile.n}`);
    picture.dataset.testid = `tile-${key}`;
    picture.dataset.view = view;
    picture.onclick = () => {
      open ? revealed.delete(key) : revealed.add(key);
      render();
    };
    const veil = el("div", { class: "veil", text: open ? "" : "click to reveal" });
    const box = el("div", { class: "tile", "data-tile": key }, picture, veil);
    box.append(
      el("div", { class: `score${alarming(tile.safety) ? " flagged" : ""}`, text: scoreText(tile.safety) }),
      el("div", { class: "state", text: tile.filtered ? "filtered on stream" : "shown on stream" }),
    );
    if (tile.filtered && mayReview && entry.count > 1) {
      box.append(
        el("button", {
          class: "ok",
          "data-testid": `approve-${key}`,
          text: `Approve tile ${tile.n}`,
          onclick: () => act("approve", { entry: entry.id, tile: tile.n }),
        }),
      );
    }
    tiles.append(box);
  }
  const reason = el("input", { type: "text", placeholder: "reason (for the log)", maxlength: "120" });
  reason.value = drafts.get(entry.id) || "";
  reason.addEventListener("input", () => drafts.set(entry.id, reason.value));
  reason.addEventListener("focus", () => (typingIn = entry.id));
  reason.addEventListener("blur", () => (typingIn = null));
  const meta = el(
    "p",
    { class: "meta" },
    el("b", { text: `#${entry.id} by ` }),
    document.createTextNode(entry.requester),
    el("br"),
    el("b", { text: "prompt: " }),
    document.createTextNode(entry.prompt),
    el("br"),
    el("b", { text: "negative: " }),
    document.createTextNode(entry.negative_prompt || "—"),
    el("br"),
    el("b", { text: "seed: " }),
    document.createTextNode(String(entry.seed)),
    el("b", { text: ` · ${entry.outcome}` }),
  );
  const buttons = el(
    "div",
    { class: "buttons" },
    el("button", {
      class: "ok",
      "data-testid": `approve-${entry.id}`,
      text: entry.count > 1 ? "Approve all" : "Approve",
      onclick: () => act("approve", { entry: entry.id }),
    }),
    reason,
    el("button", {
      class: "bad",
      "data-testid": `reject-${entry.id}`,
      text: "Reject",
      onclick: () => {
        drafts.delete(entry.id);
        act("reject", { entry: entry.id, reason: reason.value });
      },
    }),
  );
  return el("div", { class: "card", "data-entry": String(entry.id) }, meta, tiles, buttons);
}

function render() {
  if (!state) return;
  const you = state.you || {};
  const boss = you.role === "broadcaster";
  document.getElementById("who").textContent = `${you.name || ""} (${you.role || ""})`;
  note(state.status || "");

  const held = document.getElementById("held");
  const refocus = typingIn;
  held.replaceChildren(
    ...(state.held.length
      ? state.held.map((e) => heldCard(e, true))
      : [el("p", { class: "empty", text: "Nothing is waiting." })]),
  );

  if (refocus !== null) {
    const field = held.querySelector(`[data-entry="${refocus}"] input`);
    if (field) {
      field.focus();
      field.setSelectionRange(field.value.length, field.value.length);
    }
  }

  const screen = document.getElementById("screen");
  const shown = state.history.find((e) => e.id === state.on_screen);
  if (state.on_screen == null) {
    screen.replaceChildren(el("p", { class: "empty", text: "The screen is clear." }));
  } else {
    const version = shown ? `${shown.outcome}-${versionOf(shown.id)}` : "";
    screen.replaceChildren(
      img(`/api/screen/${state.on_screen}?v=${version}`, "on stream now"),
      el("p", { class: "meta", text: shown ? `#${shown.id} by ${shown.requester}: ${shown.prompt}` : "" }),
    );
  }

  const running = document.getElementById("running");
  running.replaceChildren(
    ...state.running.map((r) => el("p", { class: "hint", text: `generating for ${r.requester}: ${r.prompt}` })),
  );
  const body = document.querySelector("#queue tbody");
  body.replaceChildren(
    ...state.queue.map((q) =>
      el(
        "tr",
        {},
        el("td", { text: String(q.position) }),
        el("td", { text: q.requester }),
        el("td", { text: q.prompt }),
        el("td", { text: `${q.eta} s` }),
        el(
          "td",
          {},
          el("button", { text: "Cancel", onclick: () => act("cancel", { login: q.login }) }),
          el("button", { text: "Ignore viewer", onclick: () => act("ignore", { login: q.login }) }),
        ),
      ),
    ),
  );

  const recent = document.getElementById("history");
  recent.replaceChildren(
    ...state.history.map((e) =>
      el(
        "figure",
        {},
        img(`/api/screen/${e.id}?v=${e.outcome}-${versionOf(e.id)}`, `#${e.id}`),
        el("figcaption", { text: `#${e.id} ${e.requester} · ${e.outcome}` }),
      ),
    ),
  );

  const form = document.getElementById("settings");
  for (const [k, v] of Object.entries(state.settings)) {
    const field = form.elements[k];
    if (field && document.activeElement !== field) field.value = String(v);
  }
  const may = new Set(you.may_change || []); // the host's declarations say who changes what
  for (const field of form.elements) field.disabled = field.name ? !may.has(field.name) : !may.size;
  document.getElementById("settings-note").textContent = boss ? "" : "the safety settings are the broadcaster's";
  // forget pictures no longer on the page
  const live = new Set([...document.images].map((i) => i.getAttribute("src")));
  for (const src of images.keys()) if (!live.has(src)) images.delete(src);
}

function versionOf(id) {
  // what the stream shows of each tile: a decision changes it, and so the image's URL
  const entry = state.held.find((e) => e.id === id) || state.history.find((e) => e.id === id);
  return entry ? entry.version : "";
}

document.addEventListener("click", (event) => {
  const action = event.target.dataset && event.target.dataset.act;
  if (action) act(action);
});

document.getElementById("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled) continue; // only what you may change
    body[field.name] = field.name === "approval_mode" ? field.value : Number(field.value);
  }
  post("/api/settings", body);
});

function connect() {
  if (closed) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  const link = document.getElementById("link");
  ws.onopen = () => {
    link.textContent = "live";
    link.className = "link live";
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "state") {
      const you = (state && state.you) || msg.state.you;
      state = msg.state;
      state.you = state.you || you;
      render();
      document.body.dataset.updated = String(performance.timeOrigin + performance.now());
    }
  };
  ws.onclose = async (event) => {
    link.textContent = "disconnected";
    link.className = "link";
    if (event.code === 4003) return revoke();
    const check = await fetch("/api/state", { credentials: "same-origin" }).catch(() => null);
    if (check && (check.status === 401 || check.status === 403)) return revoke();
    setTimeout(connect, 1000);
  };
}

function revoke() {
  closed = true;
  state = null;
  images.clear();
  document.querySelector("main").replaceChildren();
  document.body.dataset.closed = "revoked";
  banner("This review link no longer works. Ask the streamer for a new one.");
}

connect();
