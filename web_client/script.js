// The chat's browser client: connect, reconnect, render.
//
// Every message from the server is one JSON object (README, "The chat
// protocol"). handleMessage() switches on its `type` and logs the types it does
// not know. Text from the network is only ever put in the page with
// textContent, never parsed as HTML.
//
// Resume (README, "The web client"): every chat message has a `seq`. The page
// remembers the highest one it has seen and the database's `epoch`, and
// reconnects with ?since=&epoch=, so that the history the server sends first
// holds exactly what it missed. A message whose seq is already shown is never
// shown again; a history with `recovered: false` replaces the messages shown.
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
  // A users_left entry names this many of those who left; its tooltip, all.
  const NAMED_LEFT = 3;
  // How many seqs are remembered to skip duplicates (the oldest are forgotten).
  const MAX_SEEN = 10000;
  // The server's default --max-text-chars (server/messages.py): a longer text
  // is refused there anyway, so the composer does not send it. A server set
  // lower still refuses with invalid_message, shown on the message.
  const MAX_TEXT_CHARS = 16384;
  // C0 control characters but tab and newline: the server refuses them too.
  const CONTROL_CHARS = /[\x00-\x08\x0b-\x1f]/;

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
    token: $("token"),
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
    composerNote: $("composer-note"),
  };

  // Everything that changes; one socket at a time.
  const state = {
    ws: null,
    ownId: null,
    openedAt: 0,
    // Set by the Disconnect button: that close must not trigger a reconnect.
    userClosed: false,
    // The token the current socket offered, and the last one the server said
    // had expired: that one is never offered again.
    token: "",
    expiredToken: null,
    reconnectTimer: null,
    reconnectAttempt: 0,
    // Whether the log stays at its latest entry when the window is resized.
    stick: true,
    // Resume: the database's epoch and the highest seq seen (a message shown,
    // or the ack of one's own); socketUrl() adds them to the URL dialled.
    epoch: null,
    lastSeq: null,
    // The seqs of the messages shown: none is shown twice.
    seen: new Set(),
    // The seq the current socket asked to resume after (null: it did not).
    resumeFrom: null,
    // The server speaks the protocol of acks (its welcome has an epoch): the
    // page then sends {"message", "clientMsgId"} objects rather than text.
    structured: false,
    // Every connection id this page had: the history names one's own
    // messages by the connection that sent them.
    ownIds: new Set(),
    // One's own messages that no ack confirmed yet, by clientMsgId:
    // { entry, text, ownId } (ownId: the connection that sent it).
    pending: new Map(),
    // One's own messages the server refused, by clientMsgId, until retried:
    // { entry, text, note, button, retryAt, timer }.
    failed: new Map(),
  };

  // ---------- helpers ----------

  // Served by the chat server (not opened as a file): that server is the one
  // to talk to.
  function isServed() {
    const { protocol } = window.location;
    return protocol === "http:" || protocol === "https:";
  }

  function defaultUrl() {
    const { protocol, host } = window.location;
    if (isServed()) return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/`;
    // Opened as a file: the original design's default server.
    return "ws://localhost:5000";
  }

  function canResume() {
    return state.lastSeq !== null && state.epoch !== null;
  }

  // The one place that turns the URL field into the URL dialled: resume's
  // since= and epoch=. The token is not in it: connect() offers it as a
  // subprotocol, so that it stays out of URLs, logs and the browser's history.
  function socketUrl() {
    const base = ui.url.value.trim();
    if (!canResume()) return base;
    try {
      const url = new URL(base);
      url.searchParams.set("since", String(state.lastSeq));
      url.searchParams.set("epoch", state.epoch);
      return url.href;
    } catch {
      return base; // not a URL: connect() says so
    }
  }

  // crypto.randomUUID() needs a secure context (https:, localhost, a file);
  // a page served over plain http: from another host falls back to this.
  function newMessageId() {
    if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
    return Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (byte) => byte.toString(16).padStart(2, "0")).join("");
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

  // Builds one entry: kind (a CSS class and data-kind), the text, optional
  // extras ({ sender, serverTimestamp, data }).
  function makeEntry(kind, text, extra = {}) {
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
          text: extra.sender === null ? "You" : (extra.user ?? shortId(extra.sender)),
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
    return entry;
  }

  // Appends entries (or moves them, if they are in the log already).
  function show(...entries) {
    // Measured now, not taken from the last scroll event, which may be pending.
    const follow = isNearBottom();
    ui.log.append(...entries);
    while (ui.log.childElementCount > MAX_LOG_ENTRIES) ui.log.firstElementChild.remove();
    updateCount();
    if (follow) scrollToBottom();
    else ui.jump.hidden = false;
  }

  function log(kind, text, extra = {}) {
    const entry = makeEntry(kind, text, extra);
    show(entry);
    return entry;
  }

  // ---------- chat messages, seqs and one's own messages ----------

  function isSeq(seq) {
    return Number.isSafeInteger(seq) && seq >= 0;
  }

  function isSeen(seq) {
    return isSeq(seq) && state.seen.has(seq);
  }

  function noteSeq(seq) {
    if (!isSeq(seq)) return;
    state.seen.add(seq);
    if (state.seen.size > MAX_SEEN) state.seen.delete(state.seen.values().next().value);
    if (state.lastSeq === null || seq > state.lastSeq) state.lastSeq = seq;
  }

  // Seqs of another database mean nothing here.
  function noteEpoch(epoch) {
    if (typeof epoch !== "string") return;
    if (state.epoch !== null && epoch !== state.epoch) {
      state.seen.clear();
      state.lastSeq = null;
    }
    state.epoch = epoch;
  }

  // The entry of a broadcast-shaped message ({ connectionId, message,
  // timestamp, seq }); `own`: sent by this page, shown on the right.
  function chatEntry(msg, own) {
    const data = own ? {} : { sender: String(msg.connectionId ?? "") };
    if (isSeq(msg.seq)) data.seq = String(msg.seq);
    noteSeq(msg.seq);
    return makeEntry(own ? "own" : "broadcast", String(msg.message ?? ""), {
      sender: own ? null : String(msg.connectionId ?? "unknown"),
      // The sender's authenticated name, when the server has authentication on.
      user: typeof msg.user === "string" ? msg.user : undefined,
      serverTimestamp: msg.timestamp,
      data,
    });
  }

  // One's own message: "sending…" until the ack, then "✓" with its seq.
  const DELIVERY = {
    pending: ["sending…", "Waiting for the server to confirm that it saved this message"],
    confirmed: ["✓", "Saved by the server"],
    unconfirmed: ["not confirmed",
      "The connection closed before the server confirmed this message: it may not have arrived"],
    failed: ["not sent", "The server refused this message"],
  };

  function setDelivery(entry, status, seq) {
    entry.dataset.status = status;
    if (isSeq(seq)) entry.dataset.seq = String(seq);
    let mark = entry.querySelector(".delivery");
    if (mark === null) {
      mark = el("span", { className: "delivery", testid: "delivery" });
      entry.querySelector(".entry-head")?.append(mark);
    }
    const [text, title] = DELIVERY[status];
    mark.textContent = text;
    mark.title = isSeq(seq) ? `${title} (message #${seq})` : title;
  }

  // Why the server refused one's own message, in the words shown under it.
  function refusal(msg) {
    switch (msg.code) {
      case "rate_limited":
        return "Sent too fast: the server did not take it.";
      case "invalid_message":
        return `The server refused it: ${String(msg.message ?? "invalid message")}.`;
      case "not_persisted":
        return "The server could not save it (the others may have seen it).";
      default:
        return `The server refused it: ${String(msg.code ?? "error")}` +
          `${msg.message !== undefined ? `: ${msg.message}` : ""}.`;
    }
  }

  // An error names one's own message: "not sent", the reason, and Retry
  // (after retryAfterMs, for a rate limit).
  function markFailed(clientMsgId, p, msg) {
    const wait = Number.isFinite(msg.retryAfterMs) ? Math.max(0, msg.retryAfterMs) : 0;
    const reason = refusal(msg);
    setDelivery(p.entry, "failed");
    p.entry.querySelector(".delivery").title = reason;
    const button = el("button", { className: "retry", text: "Retry", testid: "retry" });
    button.type = "button";
    button.addEventListener("click", () => retry(clientMsgId));
    const note = el("div", { className: "delivery-note", testid: "delivery-note" },
      el("span", { text: reason, testid: "delivery-reason" }), button);
    p.entry.querySelector(".entry-body").append(note);
    state.failed.set(clientMsgId, {
      entry: p.entry, text: p.text, note, button, retryAt: Date.now() + wait, timer: null,
    });
    refreshRetry(clientMsgId);
  }

  // Retry is possible once connected and once the rate limit's wait is over;
  // until then it counts the seconds down.
  function refreshRetry(clientMsgId) {
    const f = state.failed.get(clientMsgId);
    if (f === undefined) return;
    clearTimeout(f.timer);
    f.timer = null;
    const wait = f.retryAt - Date.now();
    const open = ui.status.dataset.state === "open";
    f.button.disabled = !open || wait > 0;
    f.button.textContent = wait > 0 ? `Retry in ${Math.ceil(wait / 1000)} s` : "Retry";
    f.button.title = open ? "Send this message again" : "Connect to send this message again";
    if (wait > 0) f.timer = setTimeout(() => refreshRetry(clientMsgId), wait % 1000 || 1000);
  }

  // The same text with the same clientMsgId: "sending…" again, then the ack's
  // "✓". It moves to the end of the log, since it is sent after all shown.
  function retry(clientMsgId) {
    const f = state.failed.get(clientMsgId);
    const ws = state.ws;
    if (f === undefined || ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() < f.retryAt) return;
    clearTimeout(f.timer);
    state.failed.delete(clientMsgId);
    f.note.remove();
    ws.send(JSON.stringify({ message: f.text, clientMsgId }));
    state.pending.set(clientMsgId, { entry: f.entry, text: f.text, ownId: state.ownId });
    setDelivery(f.entry, "pending");
    show(f.entry);
  }

  function forgetFailed() {
    for (const f of state.failed.values()) clearTimeout(f.timer);
    state.failed.clear();
  }

  // The pending message that a history item from one of this page's earlier
  // connections is: by its clientMsgId when the item has one, else the oldest
  // with the same text sent on that connection.
  function takePending(item) {
    let found = null;
    if (typeof item.clientMsgId === "string") {
      found = state.pending.has(item.clientMsgId) ? item.clientMsgId : null;
    } else {
      for (const [id, p] of state.pending) {
        if (p.ownId === item.connectionId && p.text === item.message) {
          found = id;
          break;
        }
      }
    }
    if (found === null) return null;
    const { entry } = state.pending.get(found);
    state.pending.delete(found);
    return entry;
  }

  // Removes every chat message shown but one's own still waiting for an ack
  // or refused (they can still be retried).
  function resetView() {
    const waiting = new Set([...state.pending.values(), ...state.failed.values()]
      .map((p) => p.entry));
    for (const entry of ui.log.querySelectorAll('li[data-kind="broadcast"], li[data-kind="own"]')) {
      if (!waiting.has(entry)) entry.remove();
    }
    state.seen.clear();
    state.lastSeq = null;
    updateCount();
  }

  // {"type": "history", "messages": [...], "epoch", "recovered"}: sent once,
  // right after the welcome, oldest first.
  function showHistory(msg) {
    const items = Array.isArray(msg.messages) ? msg.messages : [];
    const from = state.resumeFrom;
    noteEpoch(msg.epoch);
    if (msg.recovered !== true) {
      resetView();
      if (from !== null) {
        log("info", `The server could not resume after message #${from} ` +
          "(its database changed, or no longer keeps those messages): " +
          `showing its latest ${items.length} instead.`);
      }
    } else if (from !== null) {
      const n = items.length;
      log("info", `Resumed after message #${from}: ${n} missed ${n === 1 ? "message" : "messages"}.`);
    }
    const entries = [];
    for (const item of items) {
      if (item === null || typeof item !== "object" || isSeen(item.seq)) continue;
      const own = state.ownIds.has(item.connectionId);
      const waiting = own ? takePending(item) : null;
      if (waiting === null) {
        entries.push(chatEntry(item, own));
      } else {
        // Sent before the connection dropped, and saved after all: it moves
        // to its place in the order.
        noteSeq(item.seq);
        setDelivery(waiting, "confirmed", item.seq);
        entries.push(waiting);
      }
    }
    // What earlier connections sent and the history does not have stays
    // "not confirmed", after the history.
    for (const [id, p] of state.pending) {
      if (p.ownId === state.ownId) continue;
      state.pending.delete(id);
      entries.push(p.entry);
    }
    if (entries.length) show(...entries);
  }

  // ---------- connection state ----------

  function setState(name) {
    const labels = { connecting: "Connecting…", open: "Open", closed: "Closed" };
    ui.status.dataset.state = name;
    ui.statusText.textContent = labels[name];
    const open = name === "open";
    const closed = name === "closed";
    ui.url.disabled = !closed;
    ui.token.disabled = !closed;
    ui.connect.disabled = !closed;
    ui.disconnect.disabled = closed && state.reconnectTimer === null;
    ui.message.disabled = !open;
    ui.send.disabled = !open;
    ui.message.placeholder = open ? "Write a message…" : "Connect to send messages";
    document.title = `${open ? "● " : ""}rfc6455 chat`;
    for (const clientMsgId of state.failed.keys()) refreshRetry(clientMsgId);
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
    const resumeFrom = canResume() ? state.lastSeq : null;
    const url = socketUrl();
    if (!url) {
      log("error", "Enter a server URL, such as ws://localhost:5000.");
      ui.url.focus();
      return;
    }
    const token = ui.token.value.trim();
    if (token && token === state.expiredToken) {
      askForToken("This token has expired: paste a new one in the Token field, then Connect.");
      return;
    }
    let ws;
    try {
      // A browser cannot set a header on a WebSocket handshake: the token goes as the
      // subprotocol "access_token.<token>", beside "chat", which the server selects (a
      // browser fails a handshake whose answer selects none of the subprotocols offered).
      ws = token ? new WebSocket(url, ["chat", `access_token.${token}`]) : new WebSocket(url);
    } catch (error) {
      // A malformed URL, or ws:// from an https:// page.
      log("error", `Cannot connect to “${url}”: ${error.message}`);
      setState("closed");
      return;
    }
    state.ws = ws;
    state.token = token;
    state.userClosed = false;
    state.openedAt = 0;
    state.resumeFrom = resumeFrom;
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
      markToken(false);
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
    for (const p of state.pending.values()) {
      if (p.ownId === state.ownId) setDelivery(p.entry, "unconfirmed");
    }
    setOwnId(null);
    const words = describeClose(event.code, event.reason);
    const data = { code: String(event.code) };
    if (wasOpen) log("closed", `Connection closed: ${words}`, { data });
    else if (state.userClosed) log("closed", `Connection attempt to ${url} cancelled.`, { data });
    else {
      log("closed", `Could not connect to ${url}: ${words}`, { data });
      // The browser shows a page nothing of a refused handshake: say what it may have been.
      log("error", "The server refused the connection or could not be reached (a browser is " +
        "not told which). If it requires a token, check the Token field: a missing or invalid " +
        "one is refused (401), as is a page from a site the server does not allow (403), " +
        "or a client with too many connections (429, 503).");
    }

    // The server closes a connection whose token expired with exactly this
    // (server/auth.py): dialling again with that token would only be refused.
    const expired = event.code === 1008 && event.reason === "token expired";
    if (expired) {
      state.expiredToken = state.token;
      state.reconnectAttempt = 0;
    } else if (!state.userClosed && ui.reconnect.checked) {
      if (lasted >= STABLE_MS) state.reconnectAttempt = 0;
      scheduleReconnect();
    }
    setState("closed");
    if (expired) {
      askForToken("Your access token has expired. Paste a new one in the Token field, then " +
        "Connect: the chat resumes where it stopped.");
    }
  }

  // Says why a token is needed, and puts the cursor in the Token field, its
  // old value selected so that a paste replaces it.
  function askForToken(text) {
    log("token", text);
    markToken(true);
    ui.token.focus();
    ui.token.select();
  }

  function markToken(expired) {
    if (expired) {
      ui.token.setAttribute("aria-invalid", "true");
      ui.token.title = "This token has expired: enter a new one";
    } else {
      ui.token.removeAttribute("aria-invalid");
      ui.token.removeAttribute("title");
    }
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

  function whoLeft(departure) {
    if (typeof departure.user === "string") return departure.user;
    return shortId(departure.connectionId ?? "someone");
  }

  function connectionsOpen(msg) {
    const total = Number(msg.totalConnections);
    if (!Number.isFinite(total)) return "";
    return ` · ${total} ${total === 1 ? "connection" : "connections"} open`;
  }

  // "ann", "ann and bob", "ann, bob and cy"
  function listOf(words) {
    if (words.length < 2) return words.join("");
    return `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
  }

  // {"type": "users_left", "users": [...], "more": K, "totalConnections": T}:
  // those who left beyond the server's --leave-rate, announced together, and
  // so shown as one entry, naming a few of them.
  function showUsersLeft(msg) {
    const users = (Array.isArray(msg.users) ? msg.users : [])
      .filter((user) => user !== null && typeof user === "object");
    const more = Number.isSafeInteger(msg.more) && msg.more > 0 ? msg.more : 0;
    const count = users.length + more;
    const names = users.slice(0, NAMED_LEFT).map(whoLeft);
    const unnamed = count - names.length;
    const who = unnamed > 0 ? [...names, `${unnamed} more`] : names;
    const list = who.length ? ` (${listOf(who)})` : "";
    const entry = log("users_left",
      `${count} ${count === 1 ? "person" : "people"} left${list}${connectionsOpen(msg)}`, {
        data: { count: String(count), total: String(msg.totalConnections) },
      });
    if (users.length) {
      entry.title = users.map(whoLeft).join(", ") + (more ? ` and ${more} more` : "");
    }
  }

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
          state.ownIds.add(msg.connectionId);
          log("id", `Your connection id is ${msg.connectionId}`, {
            data: { connectionId: msg.connectionId },
          });
        } else {
          log("unknown", `Message without a type: ${data}`);
        }
        break;
      case "welcome":
        state.structured = typeof msg.epoch === "string";
        noteEpoch(msg.epoch);
        log("welcome", String(msg.message ?? "Welcome"));
        break;
      case "history":
        showHistory(msg);
        break;
      case "broadcast":
        if (!isSeen(msg.seq)) show(chatEntry(msg, false));
        break;
      case "ack": {
        // One's own message is saved: its seq counts as seen.
        noteSeq(msg.seq);
        const p = state.pending.get(msg.clientMsgId);
        if (p !== undefined) {
          state.pending.delete(msg.clientMsgId);
          setDelivery(p.entry, "confirmed", msg.seq);
        }
        break;
      }
      case "user_left": {
        const how = msg.closeStatus !== undefined ? ` (closed with ${msg.closeStatus})` : "";
        log("user_left", `${whoLeft(msg)} left${how}${connectionsOpen(msg)}`, {
          data: { connectionId: String(msg.connectionId ?? ""), total: String(msg.totalConnections) },
        });
        break;
      }
      case "users_left":
        showUsersLeft(msg);
        break;
      case "error": {
        // One that names a message waiting for its ack is shown on it.
        const p = state.pending.get(msg.clientMsgId);
        if (p !== undefined) {
          state.pending.delete(msg.clientMsgId);
          markFailed(msg.clientMsgId, p, msg);
          break;
        }
        const code = msg.code !== undefined ? ` ${msg.code}` : "";
        const detail = msg.message !== undefined ? `: ${msg.message}` : "";
        const after = Number.isFinite(msg.retryAfterMs)
          ? ` (retry after ${(msg.retryAfterMs / 1000).toFixed(1)} s)`
          : "";
        log("error", `Server error${code}${detail}${after}`);
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

  ui.token.addEventListener("input", () => {
    markToken(ui.token.value.trim() !== "" && ui.token.value.trim() === state.expiredToken);
  });

  ui.reconnect.addEventListener("change", () => {
    if (!ui.reconnect.checked && cancelReconnect()) {
      log("info", "Automatic reconnect turned off; the pending attempt is cancelled.");
      state.reconnectAttempt = 0;
      setState(state.ws ? ui.status.dataset.state : "closed");
    }
  });

  // Why the server would refuse this text, if it is cheap to tell here.
  function unsendable(text) {
    if (!text.trim()) return "A message cannot be blank: write something first.";
    if (text.length > MAX_TEXT_CHARS) {
      // Counted as the server counts: code points, not UTF-16 units.
      const length = [...text].length;
      if (length > MAX_TEXT_CHARS) {
        return `This message has ${length.toLocaleString("en")} characters; the server takes ` +
          `at most ${MAX_TEXT_CHARS.toLocaleString("en")}. Shorten it or send it in parts.`;
      }
    }
    if (CONTROL_CHARS.test(text)) {
      return "This message contains control characters (other than tab and new line), " +
        "which the server refuses.";
    }
    return null;
  }

  function composerNote(text) {
    ui.composerNote.textContent = text ?? "";
    ui.composerNote.hidden = !text;
    if (text) ui.message.setAttribute("aria-invalid", "true");
    else ui.message.removeAttribute("aria-invalid");
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value;
    const ws = state.ws;
    if (text === "" || ws === null || ws.readyState !== WebSocket.OPEN) return;
    // What the server would refuse stays in the box, with the reason.
    const why = unsendable(text);
    composerNote(why);
    if (why !== null) {
      ui.message.focus();
      return;
    }
    // The server does not echo a sender's own message: this is its only
    // entry, confirmed by the ack (a server without acks gets plain text).
    const clientMsgId = state.structured ? newMessageId() : null;
    ws.send(clientMsgId === null ? text : JSON.stringify({ message: text, clientMsgId }));
    const entry = log("own", text, { sender: null });
    if (clientMsgId !== null) {
      entry.dataset.clientMsgId = clientMsgId;
      state.pending.set(clientMsgId, { entry, text, ownId: state.ownId });
      setDelivery(entry, "pending");
    }
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
  // A note goes once its reason does; one for a text too long comes while typing.
  ui.message.addEventListener("input", () => {
    const text = ui.message.value;
    if (!ui.composerNote.hidden || text.length > MAX_TEXT_CHARS) {
      composerNote(text === "" ? null : unsendable(text));
    }
  });

  ui.clear.addEventListener("click", () => {
    ui.log.replaceChildren();
    // Cleared messages stay gone: an ack or a history no longer brings them back.
    state.pending.clear();
    forgetFailed();
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
  // A token may come in this page's own URL (?access_token=...): it goes to the Token field
  // and out of the address bar, so that it is not kept in the browser's history.
  const pageUrl = new URL(window.location.href);
  if (pageUrl.searchParams.has("access_token")) {
    ui.token.value = pageUrl.searchParams.get("access_token");
    pageUrl.searchParams.delete("access_token");
    history.replaceState(null, "", pageUrl.href);
  }
  setState("closed");
  updateCount();
  // Served by the chat server, the page joins its chat at once, as a chat
  // does; opened as a file, it waits for Connect, since which server to dial
  // is the person's choice.
  if (isServed()) connect();
})();
