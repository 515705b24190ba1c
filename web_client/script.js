// The chat's browser client: connect, reconnect, render.
//
// Every message from the server is one JSON object (README, "The chat
// protocol"). handleMessage() switches on its `type` and logs the types it does
// not know. Text from the network is only ever put in the page with
// textContent, never parsed as HTML.
"use strict";

(() => {
  // Automatic reconnect: the delay doubles from BASE to MAX, with ±20 % jitter
  // so that many clients dropped by one server restart do not come back at once.
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  // A connection that stayed open this long counts as healthy: the next outage
  // starts again from the base delay.
  const STABLE_MS = 10000;
  // Older entries are dropped beyond this, so a long session stays fast.
  const MAX_LOG_ENTRIES = 2000;
  // Within this many pixels of the bottom, the log follows new entries.
  const STICKY_PX = 48;
  const SHORT_ID_LENGTH = 8;

  // RFC 6455 §7.4.1 codes, in plain words.
  const CLOSE_CODES = {
    1000: "Normal closure",
    1001: "Going away: the server is shutting down or restarting",
    1002: "Protocol error: the server received a malformed frame",
    1003: "Unsupported data: the server accepts text messages only",
    1005: "Closed without a status code",
    1006: "Connection lost: no closing handshake " +
      "(server down or unreachable, network failure, or handshake refused)",
    1007: "Invalid data: a message was not valid UTF-8",
    1008: "Policy violation: the server refused something this client did",
    1009: "Message too big: it exceeded the server's size limit",
    1010: "The server did not offer a required extension",
    1011: "Server error: the server hit an unexpected condition",
    1012: "Service restart: the server is restarting",
    1013: "Try again later: the server is overloaded",
    1015: "TLS handshake failed",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    connectionForm: $("connection"),
    url: $("url"),
    connect: $("connect"),
    disconnect: $("disconnect"),
    reconnect: $("reconnect"),
    status: $("status"),
    statusText: $("status-text"),
    ownId: $("own-id"),
    log: $("log"),
    logScroll: $("log-scroll"),
    logEmpty: $("log-empty"),
    logCount: $("log-count"),
    clear: $("clear"),
    jump: $("jump"),
    composer: $("composer"),
    message: $("message"),
    send: $("send"),
  };

  // Everything that changes; one socket at a time.
  const state = {
    ws: null,
    ownId: null,
    openedAt: 0,
    // Set by the Disconnect button: that close must not trigger a reconnect.
    userClosed: false,
    reconnectTimer: null,
    reconnectAttempt: 0,
    // Whether the log stays at its latest entry when the window is resized.
    stick: true,
    // Room for resume (issue 6: ?since=&epoch=) and access tokens (issue 7):
    // socketUrl() is the one place that turns the URL field into the URL dialled.
  };

  // ---------- helpers ----------

  function defaultUrl() {
    const { protocol, host } = window.location;
    if (protocol === "http:" || protocol === "https:") {
      return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/`;
    }
    // Opened as a file: the original design's default server.
    return "ws://localhost:5000";
  }

  function socketUrl() {
    return ui.url.value.trim();
  }

  function shortId(id) {
    return String(id).slice(0, SHORT_ID_LENGTH);
  }

  // A stable hue per sender, so people are told apart at a glance.
  function hueOf(id) {
    let hash = 0;
    for (const ch of String(id)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return hash % 360;
  }

  function localTime(date) {
    return date.toLocaleTimeString([], {
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    });
  }

  // The server's "YYYY-MM-DD HH:mm:ss" is UTC: show it in local time, keep the
  // original in the tooltip.
  function serverTime(timestamp) {
    const node = el("time", { className: "server-time", testid: "server-time" });
    const text = String(timestamp ?? "");
    const match = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text);
    if (match) {
      const [, y, mo, d, h, mi, s] = match.map(Number);
      const date = new Date(Date.UTC(y, mo - 1, d, h, mi, s));
      node.dateTime = date.toISOString();
      node.textContent = `sent ${localTime(date)}`;
      node.title = `server time ${text} UTC`;
    } else {
      node.textContent = text;
    }
    return node;
  }

  function describeClose(code, reason) {
    const words = CLOSE_CODES[code] ||
      (code >= 4000 && code <= 4999 ? "Closed by the application" : "Closed");
    const why = reason ? ` Reason: “${reason}”.` : "";
    return `${code} ${words}.${why}`;
  }

  // Builds an element; `text` always goes through textContent.
  function el(tag, { className, text, testid, title } = {}, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (testid) node.dataset.testid = testid;
    if (title) node.title = title;
    if (text !== undefined) node.textContent = String(text);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // ---------- the log ----------

  function isNearBottom() {
    const s = ui.logScroll;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= STICKY_PX;
  }

  function scrollToBottom() {
    ui.logScroll.scrollTop = ui.logScroll.scrollHeight;
    state.stick = true;
    ui.jump.hidden = true;
  }

  function updateCount() {
    const n = ui.log.childElementCount;
    ui.logCount.textContent = `${n} ${n === 1 ? "entry" : "entries"}`;
    ui.logEmpty.hidden = n > 0;
  }

  // Appends one entry: kind (a CSS class and data-kind), the text, optional
  // extras ({ sender, serverTimestamp, data }).
  function log(kind, text, extra = {}) {
    // Measured now, not taken from the last scroll event, which may be pending.
    const follow = isNearBottom();
    const now = new Date();
    const entry = el("li", { className: `entry entry-${kind}`, testid: "log-entry" });
    entry.dataset.kind = kind;
    for (const [key, value] of Object.entries(extra.data || {})) entry.dataset[key] = value;

    const time = el("time", { className: "entry-time", text: localTime(now), testid: "entry-time" });
    time.dateTime = now.toISOString();

    const body = el("div", { className: "entry-body" });
    if (extra.sender !== undefined || extra.serverTimestamp !== undefined) {
      const head = el("div", { className: "entry-head" });
      if (extra.sender !== undefined) {
        const sender = el("span", {
          className: "sender",
          text: extra.sender === null ? "You" : shortId(extra.sender),
          testid: "sender",
          title: extra.sender === null ? state.ownId || "" : String(extra.sender),
        });
        if (extra.sender !== null) sender.style.setProperty("--sender-hue", hueOf(extra.sender));
        head.append(sender);
      }
      if (extra.serverTimestamp !== undefined) head.append(serverTime(extra.serverTimestamp));
      body.append(head);
    }
    body.append(el("p", { className: "entry-text", text, testid: "entry-text" }));
    entry.append(time, body);
    ui.log.append(entry);

    while (ui.log.childElementCount > MAX_LOG_ENTRIES) ui.log.firstElementChild.remove();
    updateCount();
    if (follow) scrollToBottom();
    else ui.jump.hidden = false;
    return entry;
  }

  // ---------- connection state ----------

  function setState(name) {
    const labels = { connecting: "Connecting…", open: "Open", closed: "Closed" };
    ui.status.dataset.state = name;
    ui.statusText.textContent = labels[name];
    const open = name === "open";
    const closed = name === "closed";
    ui.url.disabled = !closed;
    ui.connect.disabled = !closed;
    ui.disconnect.disabled = closed && state.reconnectTimer === null;
    ui.message.disabled = !open;
    ui.send.disabled = !open;
    ui.message.placeholder = open ? "Write a message…" : "Connect to send messages";
    document.title = `${open ? "● " : ""}rfc6455 chat`;
  }

  function setOwnId(id) {
    state.ownId = id;
    ui.ownId.textContent = id || "—";
    ui.ownId.title = id ? "Your connection id" : "Not connected";
  }

  function cancelReconnect() {
    if (state.reconnectTimer === null) return false;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    return true;
  }

  function connect({ retry = false } = {}) {
    cancelReconnect();
    const url = socketUrl();
    if (!url) {
      log("error", "Enter a server URL, such as ws://localhost:5000.");
      ui.url.focus();
      return;
    }
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      // A malformed URL, or ws:// from an https:// page.
      log("error", `Cannot connect to “${url}”: ${error.message}`);
      setState("closed");
      return;
    }
    state.ws = ws;
    state.userClosed = false;
    state.openedAt = 0;
    setOwnId(null);
    setState("connecting");
    log("info", retry
      ? `Reconnecting to ${url} (attempt ${state.reconnectAttempt})…`
      : `Connecting to ${url}…`);

    // Handlers check that they belong to the current socket: a late event from
    // an old one must not change the state of a new one.
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      state.openedAt = Date.now();
      setState("open");
      log("connected", `Connected to ${url}`);
      ui.message.focus();
    });
    ws.addEventListener("message", (event) => {
      if (state.ws === ws) handleMessage(event.data);
    });
    ws.addEventListener("error", () => {
      // Browsers give no details; the close event that follows has the code.
      if (state.ws === ws && state.openedAt) log("error", "WebSocket error: the connection failed.");
    });
    ws.addEventListener("close", (event) => {
      if (state.ws === ws) handleClose(event, url);
    });
  }

  function handleClose(event, url) {
    const wasOpen = state.openedAt !== 0;
    const lasted = wasOpen ? Date.now() - state.openedAt : 0;
    state.ws = null;
    state.openedAt = 0;
    setOwnId(null);
    const words = describeClose(event.code, event.reason);
    const data = { code: String(event.code) };
    if (wasOpen) log("closed", `Connection closed: ${words}`, { data });
    else if (state.userClosed) log("closed", `Connection attempt to ${url} cancelled.`, { data });
    else log("closed", `Could not connect to ${url}: ${words}`, { data });

    if (!state.userClosed && ui.reconnect.checked) {
      if (lasted >= STABLE_MS) state.reconnectAttempt = 0;
      scheduleReconnect();
    }
    setState("closed");
  }

  function scheduleReconnect() {
    const attempt = state.reconnectAttempt;
    const ideal = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
    const delay = Math.round(ideal * (0.8 + Math.random() * 0.4));
    state.reconnectAttempt = attempt + 1;
    log("reconnect",
      `Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt + 1}). ` +
      "Untick “Auto-reconnect” to stop.");
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = null;
      connect({ retry: true });
    }, delay);
  }

  function disconnect() {
    if (cancelReconnect()) log("info", "Automatic reconnect cancelled.");
    state.reconnectAttempt = 0;
    const ws = state.ws;
    if (ws) {
      state.userClosed = true;
      // The close event logs the outcome and sets the state.
      ws.close(1000);
      return;
    }
    setState("closed");
  }

  // ---------- messages from the server ----------

  function handleMessage(data) {
    if (typeof data !== "string") {
      log("unknown", "Unexpected binary message from the server (ignored).");
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      log("unknown", `Message that is not JSON: ${data}`);
      return;
    }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
      log("unknown", `Message that is not a JSON object: ${data}`);
      return;
    }

    switch (msg.type) {
      case undefined:
        // The first message has no type: {"connectionId": "<uuid4>"}.
        if (typeof msg.connectionId === "string") {
          setOwnId(msg.connectionId);
          log("id", `Your connection id is ${msg.connectionId}`, {
            data: { connectionId: msg.connectionId },
          });
        } else {
          log("unknown", `Message without a type: ${data}`);
        }
        break;
      case "welcome":
        log("welcome", String(msg.message ?? "Welcome"));
        break;
      case "broadcast":
        log("broadcast", String(msg.message ?? ""), {
          sender: String(msg.connectionId ?? "unknown"),
          serverTimestamp: msg.timestamp,
          data: { sender: String(msg.connectionId ?? "") },
        });
        break;
      case "user_left": {
        const total = Number(msg.totalConnections);
        const who = shortId(msg.connectionId ?? "someone");
        const count = Number.isFinite(total)
          ? ` · ${total} ${total === 1 ? "connection" : "connections"} open`
          : "";
        const how = msg.closeStatus !== undefined ? ` (closed with ${msg.closeStatus})` : "";
        log("user_left", `${who} left${how}${count}`, {
          data: { connectionId: String(msg.connectionId ?? ""), total: String(msg.totalConnections) },
        });
        break;
      }
      case "error": {
        const code = msg.code !== undefined ? ` ${msg.code}` : "";
        const detail = msg.message !== undefined ? `: ${msg.message}` : "";
        const retry = Number.isFinite(msg.retryAfterMs)
          ? ` (retry after ${(msg.retryAfterMs / 1000).toFixed(1)} s)`
          : "";
        log("error", `Server error${code}${detail}${retry}`);
        break;
      }
      default:
        log("unknown", `Unknown message type “${String(msg.type)}”: ${data}`, {
          data: { type: String(msg.type) },
        });
    }
  }

  // ---------- user actions ----------

  ui.connectionForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.ws === null) {
      state.reconnectAttempt = 0;
      connect();
    }
  });

  ui.disconnect.addEventListener("click", disconnect);

  ui.reconnect.addEventListener("change", () => {
    if (!ui.reconnect.checked && cancelReconnect()) {
      log("info", "Automatic reconnect turned off; the pending attempt is cancelled.");
      state.reconnectAttempt = 0;
      setState(state.ws ? ui.status.dataset.state : "closed");
    }
  });

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value;
    const ws = state.ws;
    // Whitespace-only messages are not sent.
    if (!text.trim() || ws === null || ws.readyState !== WebSocket.OPEN) return;
    ws.send(text);
    // The server does not echo a sender's own message: this is its only entry.
    log("own", text, { sender: null });
    ui.message.value = "";
    fitComposer();
    ui.message.focus();
  });

  // Enter sends, Shift+Enter starts a new line (not while an IME is composing).
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  // The message box grows with its text, up to the limit set in the stylesheet.
  function fitComposer() {
    ui.message.style.height = "auto";
    ui.message.style.height = `${ui.message.scrollHeight + 2}px`;
  }
  ui.message.addEventListener("input", fitComposer);

  ui.clear.addEventListener("click", () => {
    ui.log.replaceChildren();
    updateCount();
    ui.jump.hidden = true;
  });

  ui.jump.addEventListener("click", scrollToBottom);
  ui.logScroll.addEventListener("scroll", () => {
    state.stick = isNearBottom();
    if (state.stick) ui.jump.hidden = true;
  });
  // A smaller window (a phone keyboard, a rotation) keeps the latest entry in view.
  new ResizeObserver(() => {
    if (state.stick) ui.logScroll.scrollTop = ui.logScroll.scrollHeight;
  }).observe(ui.logScroll);

  ui.url.value = defaultUrl();
  setState("closed");
  updateCount();
})();
