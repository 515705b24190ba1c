// The chat's browser client: channels, direct messages, presence, an outbox.
//
// Every message from the server is one JSON object (docs/protocol.md).
// handleMessage() switches on its `type`; the types it does not know are kept
// in the connection's details. Text from the network is only ever put in the
// page with textContent, never parsed as HTML.
//
// The model: a Map of channels (general always, the channels joined, the
// direct messages), each with its messages by seq, its epoch, the highest seq
// seen, its members and who is typing; and an outbox of one's own messages
// not acknowledged yet, kept in localStorage until their ack. Every change
// updates the model, then render() draws the current channel from it.
//
// Resume (docs/protocol.md, "Resuming"): general resumes with ?since=&epoch=
// in the URL, every other channel with a subscribe carrying since and epoch;
// recovered: false resets that channel's view. After a reconnect every
// message of the outbox goes out again with the same clientMsgId, and the
// server stores it once whatever happened to the first attempt.
//
// While the server cannot reach its engine (Redis), it answers a message or a
// subscribe with the error `unavailable`: not a refusal. The message stays
// pending and goes again with the same clientMsgId, the channel is subscribed
// to again, after a delay that doubles until an answer shows the chat back.
"use strict";

(() => {
  // Automatic reconnect: the delay doubles from BASE to MAX, with ±20 % jitter
  // so that many clients dropped by one server restart do not come back at once.
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  // After `unavailable`: the delay before sending again doubles from BASE to
  // MAX (±20 % jitter), and starts from BASE again once the chat answers.
  const UNAVAILABLE_BASE_MS = 500;
  const UNAVAILABLE_MAX_MS = 10000;
  // A connection that stayed open this long counts as healthy: the next outage
  // starts again from the base delay.
  const STABLE_MS = 10000;
  // A handshake that fails while the server answers /healthz is a refusal
  // (401, 403, 429, 503: a browser is told none of them) once it happened
  // this many times in a row; one could be a server that just came back.
  const REFUSALS = 2;
  // Messages kept per channel; older ones are dropped from the view.
  const MAX_MESSAGES = 1000;
  const MAX_EVENTS = 50;
  // Within this many pixels of the bottom, the view follows new messages.
  const STICKY_PX = 48;
  // The server forwards one typing signal per member every 2 s: sending more is waste.
  const TYPING_SEND_MS = 2000;
  const TYPING_SHOW_MS = 3000;
  // At most one read position a second per channel.
  const READ_THROTTLE_MS = 1000;
  // Presence: joined/left are per user, so a user's connection count, and
  // arrivals in general (which are not announced), are refreshed this often.
  const PRESENCE_REFRESH_MS = 30000;
  // ... in channels this small: a snapshot of a big one costs the server
  // kilobytes for every member asking.
  const PRESENCE_REFRESH_MAX = 100;
  const PRESENCE_DEBOUNCE_MS = 300;
  // The outbox of a tab that was closed is taken over by another tab of the
  // same browser once the closed tab has not touched it for this long.
  const OUTBOX_HEARTBEAT_MS = 10000;
  const OUTBOX_ORPHAN_MS = 120000;
  // Consecutive messages of one sender within this time share one header.
  const GROUP_MS = 5 * 60 * 1000;
  // The server's default --max-text-chars (server/messages.py): a longer text
  // is refused there anyway, so the composer does not send it.
  const MAX_TEXT_CHARS = 16384;
  const MAX_NAME_CHARS = 32;
  // C0 control characters but tab and newline: the server refuses them too.
  const CONTROL_CHARS = /[\x00-\x08\x0b-\x1f]/;
  // server/channels.py: a channel's name, and a user who can have direct messages.
  const CHANNEL_NAME = /^[A-Za-z0-9_.:@-]{1,128}$/;
  const DM_USER = /^[A-Za-z0-9_.@-]+$/;
  // server/commands.py, check_display_name(): Python's str.isprintable(),
  // which refuses every "Other" and "Separator" character but the space.
  const PRINTABLE = /^(?:[^\p{C}\p{Z}]| )+$/u;
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  const GENERAL = "general";
  const STORE = {
    clientId: "chat.clientId",
    name: "chat.name",
    channels: "chat.channels.", // + who: "anonymous" or "user:<name>"
    read: "chat.read",
    outbox: "chat.outbox.", // + the tab's id
    tab: "chat.tab",
    token: "chat.token", // sessionStorage: this tab's, until it is closed
  };

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
    1013: "Try again later: the server is overloaded or unavailable for now",
    1015: "TLS handshake failed",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    channels: $("channels"),
    join: $("join"),
    joinName: $("join-name"),
    joinNote: $("join-note"),
    dmSection: $("dm-section"),
    dms: $("dms"),
    dmHint: $("dm-hint"),
    meName: $("me-name"),
    rename: $("rename"),
    openSidebar: $("open-sidebar"),
    closeSidebar: $("close-sidebar"),
    otherUnread: $("other-unread"),
    title: $("title"),
    openMembers: $("open-members"),
    closeMembers: $("close-members"),
    memberCount: $("member-count"),
    status: $("status"),
    statusText: $("status-text"),
    unsent: $("unsent"),
    details: $("details"),
    connection: $("connection"),
    url: $("url"),
    connect: $("connect"),
    disconnect: $("disconnect"),
    useToken: $("use-token"),
    events: $("events"),
    tokenCard: $("token-card"),
    tokenText: $("token-text"),
    tokenForm: $("token-form"),
    token: $("token"),
    scroll: $("scroll"),
    empty: $("empty"),
    log: $("log"),
    jump: $("jump"),
    typing: $("typing"),
    nameForm: $("name-form"),
    name: $("name"),
    nameNote: $("name-note"),
    composer: $("composer"),
    composerNote: $("composer-note"),
    message: $("message"),
    members: $("members"),
    membersTitle: $("members-title"),
    membersNote: $("members-note"),
    scrim: $("scrim"),
  };

  // ---------- storage ----------

  // localStorage may be full, disabled or shared with other tabs: a failure
  // keeps the value in memory only.
  function stored(area, key, fallback) {
    try {
      const raw = area.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  function store(area, key, value) {
    try {
      if (value === undefined) area.removeItem(key);
      else area.setItem(key, JSON.stringify(value));
    } catch {
      // kept in memory only
    }
  }

  // crypto.randomUUID() needs a secure context (https:, localhost, a file);
  // a page served over plain http: from another host falls back to this.
  function newUuid() {
    if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-` +
      `${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  // This browser's anonymous identity: a stable id, and the name chosen.
  function loadClientId() {
    const id = stored(localStorage, STORE.clientId, null);
    if (typeof id === "string" && UUID.test(id)) return id;
    const fresh = newUuid();
    store(localStorage, STORE.clientId, fresh);
    return fresh;
  }

  // This tab's id survives a reload (sessionStorage), so a reloaded tab finds
  // its own outbox at once.
  function loadTabId() {
    const id = stored(sessionStorage, STORE.tab, null);
    if (typeof id === "string" && id) return id;
    const fresh = newUuid();
    store(sessionStorage, STORE.tab, fresh);
    return fresh;
  }

  // ---------- state ----------

  const me = {
    clientId: loadClientId(),
    name: null,
    // The authenticated user, read from the token (the server checks it).
    user: null,
  };
  const storedName = stored(localStorage, STORE.name, null);
  if (typeof storedName === "string" && nameProblem(storedName) === null) me.name = storedName;

  const state = {
    ws: null,
    connectionId: null,
    // Every connection id this page had: a history names one's own earlier
    // messages by them when there is no user or clientId to go by.
    ownConnections: new Set(),
    openedAt: 0,
    welcomed: false,
    conn: "offline", // open | connecting | waiting | offline
    offlineText: "Offline",
    userClosed: false,
    token: "",
    expiredToken: null,
    reconnectTimer: null,
    countdownTimer: null,
    reconnectAt: 0,
    attempt: 0,
    refusals: 0,
    // Bumped by every connect(): a probe that comes back late is ignored.
    generation: 0,
    // A handshake carrying the name was refused: the next one goes without it
    // (the server answers 400 to a name it refuses, which a page is not told).
    nameInUrl: false,
    withoutName: false,
    // The name of the last hello, until its answer.
    helloName: null,
    channels: new Map(),
    current: GENERAL,
    tabId: loadTabId(),
    // One's own messages waiting for their ack, in the order typed:
    // { clientMsgId, channel, to, text, createdAt, state: "queued" | "sent", node }.
    outbox: [],
    // Those the server refused, by clientMsgId, until retried or discarded.
    failed: new Map(),
    // No message leaves before this (the server's retryAfterMs).
    pausedUntil: 0,
    pumpTimer: null,
    // After `unavailable`: nothing goes from the outbox until this timer sends
    // it again; unavailableAttempt counts such refusals in a row, unavailable
    // says whether the status says so.
    unavailableTimer: null,
    unavailableAttempt: 0,
    unavailable: false,
    presenceTimer: null,
    // Channels left whose unsubscribe is not answered yet.
    leaving: new Set(),
    events: [],
    stick: true,
    renderQueued: false,
    membersDrawn: null,
  };

  // ---------- helpers ----------

  // Served by the chat server (not opened as a file): that server is the one to talk to.
  function isServed() {
    const { protocol } = window.location;
    return protocol === "http:" || protocol === "https:";
  }

  function defaultUrl() {
    const { protocol, host } = window.location;
    if (isServed()) return `${protocol === "https:" ? "wss:" : "ws:"}//${host}/`;
    return "ws://localhost:5000";
  }

  function shortId(id) {
    return String(id ?? "").slice(0, 8);
  }

  // A stable hue per sender, so people are told apart at a glance.
  function hueOf(key) {
    let hash = 0;
    for (const ch of String(key)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return hash % 360;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function dayKey(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  }

  function clockTime(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(date) === dayKey(today)) return "Today";
    if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
    return date.toLocaleDateString([], {
      weekday: "long", year: "numeric", month: "long", day: "numeric",
    });
  }

  // The server's "YYYY-MM-DD HH:MM:SS" is UTC.
  function serverDate(timestamp) {
    const match = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(String(timestamp ?? ""));
    if (!match) return null;
    const [, y, mo, d, h, mi, s] = match.map(Number);
    return new Date(Date.UTC(y, mo - 1, d, h, mi, s));
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

  function button(text, { className, testid, title } = {}, onClick) {
    const node = el("button", { className, text, testid, title });
    node.type = "button";
    node.addEventListener("click", onClick);
    return node;
  }

  // Why the server would refuse this display name, or null.
  function nameProblem(name) {
    const length = [...name].length;
    if (!name.trim()) return "A name cannot be blank.";
    if (length > MAX_NAME_CHARS) return `A name has at most ${MAX_NAME_CHARS} characters.`;
    if (!PRINTABLE.test(name)) return "A name has printable characters only.";
    return null;
  }

  // Why the server would refuse this channel name, or null.
  function channelProblem(name) {
    if (!CHANNEL_NAME.test(name)) {
      return "A channel name is 1 to 128 characters: letters, digits, _ . : @ -";
    }
    if (name.startsWith("dm:")) return "Direct messages open from a person’s name.";
    return null;
  }

  // The user a token names (its `sub`), read without checking it: the server
  // does that. Only for showing one's own name and naming direct messages.
  function tokenUser(token) {
    try {
      const part = token.split(".")[1];
      const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
      const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
      const claims = JSON.parse(new TextDecoder().decode(
        Uint8Array.from(binary, (c) => c.charCodeAt(0))));
      return typeof claims.sub === "string" && claims.sub ? claims.sub : null;
    } catch {
      return null;
    }
  }

  // ---------- identities ----------

  // A member or a sender: the server's key for it (server/handler.py, member).
  function keyOf(fields) {
    if (typeof fields.user === "string") return `user:${fields.user}`;
    if (typeof fields.clientId === "string") return `client:${fields.clientId}`;
    if (typeof fields.connectionId === "string") return `connection:${fields.connectionId}`;
    return "unknown";
  }

  function isMine(fields) {
    if (me.user !== null && fields.user === me.user) return true;
    if (me.user === null && typeof fields.clientId === "string") return fields.clientId === me.clientId;
    return typeof fields.connectionId === "string" && state.ownConnections.has(fields.connectionId) &&
      fields.user === undefined && fields.clientId === undefined;
  }

  // How a person is named: an authenticated user plainly, a chosen name as
  // unverified, a bare id as a guest.
  function nameOf(fields) {
    if (typeof fields.user === "string") return { text: fields.user, verified: true };
    if (typeof fields.name === "string" && fields.name) return { text: fields.name, verified: false };
    const id = fields.clientId ?? fields.connectionId;
    return { text: `guest ${shortId(id)}`, verified: false };
  }

  function unverifiedMark() {
    return el("span", {
      className: "unverified", text: "?", testid: "unverified",
      title: "Unverified: anyone may choose this name",
    });
  }

  // ---------- channels ----------

  function dmUsers(name) {
    const parts = name.split(":");
    if (parts.length !== 3 || parts[0] !== "dm") return null;
    const [, a, b] = parts;
    if (!DM_USER.test(a) || !DM_USER.test(b) || a > b) return null;
    return [a, b];
  }

  function dmName(user, other) {
    if (!DM_USER.test(user) || !DM_USER.test(other)) return null;
    const [a, b] = [user, other].sort();
    const name = `dm:${a}:${b}`;
    return name.length <= 128 ? name : null;
  }

  function peerOf(channel) {
    const users = dmUsers(channel.name);
    if (users === null) return null;
    return users[0] === me.user ? users[1] : users[0];
  }

  function makeChannel(name) {
    return {
      name,
      dm: dmUsers(name) !== null,
      epoch: null,
      // The highest seq seen (a message shown, or the ack of one's own).
      lastSeq: 0,
      messages: new Map(),
      days: new Map(),
      // idle: not subscribed on this connection; subscribing; subscribed.
      state: "idle",
      resumeFrom: null,
      serverRead: null,
      readSentAt: 0,
      readTimer: null,
      typingSentAt: 0,
      members: new Map(),
      // Bumped by every change of `members`: the list is drawn again only then.
      membersVersion: 0,
      // How many members there are (the snapshot lists the first 1,000).
      memberTotal: 0,
      presenceKnown: false,
      typing: new Map(),
      notice: null,
    };
  }

  function whoStores() {
    return me.user === null ? "anonymous" : `user:${me.user}`;
  }

  // The channels joined and the direct messages open, for this identity.
  function loadChannels() {
    state.channels = new Map([[GENERAL, makeChannel(GENERAL)]]);
    const names = stored(localStorage, STORE.channels + whoStores(), []);
    for (const name of Array.isArray(names) ? names : []) {
      if (typeof name !== "string" || !CHANNEL_NAME.test(name) || state.channels.has(name)) continue;
      const users = dmUsers(name);
      if (users !== null && !users.includes(me.user)) continue;
      state.channels.set(name, makeChannel(name));
    }
    if (!state.channels.has(state.current)) state.current = GENERAL;
  }

  function saveChannels() {
    const names = [...state.channels.keys()].filter((name) => name !== GENERAL);
    store(localStorage, STORE.channels + whoStores(), names);
  }

  function current() {
    return state.channels.get(state.current) ?? state.channels.get(GENERAL);
  }

  function ensureChannel(name) {
    let channel = state.channels.get(name);
    if (channel === undefined) {
      channel = makeChannel(name);
      state.channels.set(name, channel);
      saveChannels();
    }
    return channel;
  }

  function label(channel) {
    return channel.dm ? `@${peerOf(channel)}` : `#${channel.name}`;
  }

  // Read positions: the server's (lastRead), and this browser's, per epoch.
  function localRead(channel) {
    const all = stored(localStorage, STORE.read, {});
    const entry = all && typeof all === "object" ? all[channel.name] : null;
    if (entry && entry.epoch === channel.epoch && Number.isSafeInteger(entry.seq)) return entry.seq;
    return 0;
  }

  function setLocalRead(channel, seq) {
    const all = stored(localStorage, STORE.read, {});
    const map = all && typeof all === "object" ? all : {};
    map[channel.name] = { epoch: channel.epoch, seq };
    store(localStorage, STORE.read, map);
  }

  function readMark(channel) {
    return Math.max(channel.serverRead ?? 0, localRead(channel));
  }

  function unreadCount(channel) {
    const mark = readMark(channel);
    let count = 0;
    for (const message of channel.messages.values()) {
      if (message.seq > mark && !message.own) count += 1;
    }
    return count;
  }

  // The last of the others' messages: one's own need no read position (they
  // are never unread), and each read costs a token of the rate limit.
  function topSeq(channel) {
    let top = 0;
    for (const message of channel.messages.values()) {
      if (!message.own && message.seq > top) top = message.seq;
    }
    return top;
  }

  function viewing(channel) {
    return channel.name === state.current && document.visibilityState !== "hidden";
  }

  // The channel is in view: everything in it is read. The server is told at
  // most once a second per channel.
  function markRead(channel) {
    if (!viewing(channel) || channel.epoch === null) return;
    const top = topSeq(channel);
    if (top === 0 || readMark(channel) >= top) return;
    setLocalRead(channel, top);
    if (channel.readTimer !== null) return;
    const wait = Math.max(0, channel.readSentAt + READ_THROTTLE_MS - Date.now());
    channel.readTimer = setTimeout(() => {
      channel.readTimer = null;
      sendRead(channel);
    }, wait);
  }

  function sendRead(channel) {
    const seq = localRead(channel);
    if (seq <= (channel.serverRead ?? 0) || channel.state !== "subscribed") return;
    if (sendExtra({ type: "read", channel: channel.name, seq })) {
      channel.serverRead = seq;
      channel.readSentAt = Date.now();
    }
  }

  // ---------- messages ----------

  function addMessage(channel, item) {
    if (item === null || typeof item !== "object" || !Number.isSafeInteger(item.seq)) return false;
    if (channel.messages.has(item.seq)) return false;
    const message = {
      seq: item.seq,
      text: String(item.message ?? ""),
      timestamp: typeof item.timestamp === "string" ? item.timestamp : null,
      date: serverDate(item.timestamp) ?? new Date(),
      sender: {
        user: typeof item.user === "string" ? item.user : undefined,
        clientId: typeof item.clientId === "string" ? item.clientId : undefined,
        name: typeof item.name === "string" ? item.name : undefined,
        connectionId: typeof item.connectionId === "string" ? item.connectionId : undefined,
      },
      own: false,
      node: null,
    };
    message.own = isMine(message.sender);
    channel.messages.set(item.seq, message);
    channel.lastSeq = Math.max(channel.lastSeq, item.seq);
    if (channel.messages.size > MAX_MESSAGES) {
      const seqs = [...channel.messages.keys()].sort((a, b) => a - b);
      for (const seq of seqs.slice(0, channel.messages.size - MAX_MESSAGES)) {
        channel.messages.delete(seq);
      }
    }
    return true;
  }

  function senderNode(fields, own) {
    if (own) return el("span", { className: "sender", text: "You", testid: "sender" });
    const { text, verified } = nameOf(fields);
    const user = fields.user;
    const node = canDm(user)
      ? button(text, { className: "sender sender-link", testid: "sender", title: `Write to ${user}` },
        () => openDm(user))
      : el("span", { className: "sender", text, testid: "sender" });
    node.style.setProperty("--sender-hue", hueOf(keyOf(fields)));
    const wrap = el("span", { className: "sender-wrap" }, node);
    if (!verified) wrap.append(unverifiedMark());
    return wrap;
  }

  function timeNode(date, timestamp) {
    const node = el("time", { className: "msg-time", text: clockTime(date), testid: "time" });
    node.dateTime = date.toISOString();
    node.title = timestamp ? `${date.toLocaleString()} (server time ${timestamp} UTC)` :
      date.toLocaleString();
    return node;
  }

  function messageNode({ own, sender, text, date, timestamp }) {
    const node = el("li", { className: "msg", testid: "message" });
    node.dataset.own = String(own);
    node.dataset.sender = keyOf(sender);
    const head = el("div", { className: "msg-head" }, senderNode(sender, own), timeNode(date, timestamp));
    const body = el("div", { className: "msg-body" }, head,
      el("p", { className: "msg-text", text, testid: "text" }));
    node.append(body);
    return node;
  }

  function chatNode(message) {
    if (message.node === null) {
      message.node = messageNode(message);
      message.node.dataset.seq = String(message.seq);
      if (message.clientMsgId) message.node.dataset.clientMsgId = message.clientMsgId;
      if (message.own) setDelivery(message.node, "confirmed");
    }
    return message.node;
  }

  function ownSender() {
    if (me.user !== null) return { user: me.user };
    return { clientId: me.clientId, name: me.name ?? undefined, connectionId: state.connectionId ?? undefined };
  }

  function itemNode(item) {
    if (item.node === null) {
      item.node = messageNode({
        own: true, sender: ownSender(), text: item.text, date: new Date(item.createdAt),
        timestamp: null,
      });
      item.node.dataset.clientMsgId = item.clientMsgId;
      setDelivery(item.node, "pending");
    }
    return item.node;
  }

  // pending: in the outbox; confirmed: the server stored it; failed: refused.
  function setDelivery(node, status) {
    node.dataset.status = status;
    let mark = node.querySelector(".delivery");
    if (mark === null) {
      mark = el("span", { className: "delivery", testid: "delivery" });
      node.querySelector(".msg-head").append(mark);
    }
    const words = { pending: "sending…", confirmed: "✓", failed: "not sent" };
    mark.textContent = words[status];
    mark.title = {
      pending: "Kept in this browser until the server confirms it; sent again after a reconnect",
      confirmed: "Stored by the server",
      failed: "The server did not take it",
    }[status];
    if (status !== "failed") node.querySelector(".delivery-note")?.remove();
  }

  function refusal(msg) {
    switch (msg.code) {
      case "invalid_message":
        return `The server refused it: ${String(msg.message ?? "invalid message").replace(/\.$/, "")}.`;
      case "not_persisted":
        return "The server could not save it (the others may have seen it).";
      case "forbidden":
        return `Not allowed here: ${String(msg.message ?? "forbidden").replace(/\.$/, "")}.`;
      case "not_subscribed":
        return "Not sent: this page is not in that channel any more.";
      case "unknown_user":
        return `No direct messages with this user: ${String(msg.message ?? "")}`.trim();
      default:
        return `The server refused it (${String(msg.code)}): ${String(msg.message ?? "")}`.trim();
    }
  }

  function markFailed(item, msg) {
    state.failed.set(item.clientMsgId, item);
    const node = itemNode(item);
    setDelivery(node, "failed");
    const reason = refusal(msg);
    node.querySelector(".delivery").title = reason;
    const note = el("div", { className: "delivery-note", testid: "delivery-note" },
      el("span", { text: reason, testid: "delivery-reason" }),
      button("Retry", { className: "link-btn", testid: "retry", title: "Send it again" },
        () => retry(item.clientMsgId)),
      button("Discard", { className: "link-btn", testid: "discard" },
        () => discard(item.clientMsgId)));
    node.querySelector(".msg-body").append(note);
  }

  // The same text with the same clientMsgId, back in the outbox.
  function retry(clientMsgId) {
    const item = state.failed.get(clientMsgId);
    if (item === undefined) return;
    state.failed.delete(clientMsgId);
    item.state = "queued";
    item.createdAt = Date.now(); // to the end of the view, where its seq will put it
    setDelivery(itemNode(item), "pending");
    state.outbox.push(item);
    saveOutbox();
    scrollToBottom();
    render();
    pump();
  }

  function discard(clientMsgId) {
    state.failed.delete(clientMsgId);
    render();
  }

  // ---------- the outbox ----------

  function outboxKey() {
    return STORE.outbox + state.tabId;
  }

  function saveOutbox() {
    const items = state.outbox.map(({ clientMsgId, channel, to, text, createdAt }) =>
      ({ clientMsgId, channel, to, text, createdAt }));
    store(localStorage, outboxKey(), items.length ? { updated: Date.now(), items } : undefined);
  }

  function validItem(item) {
    return item !== null && typeof item === "object" && typeof item.clientMsgId === "string" &&
      typeof item.channel === "string" && CHANNEL_NAME.test(item.channel) &&
      typeof item.text === "string" && Number.isFinite(item.createdAt) &&
      (item.to === null || item.to === undefined || typeof item.to === "string");
  }

  // This tab's outbox (after a reload), and those of tabs closed a while ago.
  function adoptOutboxes() {
    const found = [];
    const own = stored(localStorage, outboxKey(), null);
    if (own && Array.isArray(own.items)) found.push(...own.items);
    let keys = [];
    try {
      keys = Object.keys(localStorage).filter((k) => k.startsWith(STORE.outbox) && k !== outboxKey());
    } catch {
      keys = [];
    }
    for (const key of keys) {
      const other = stored(localStorage, key, null);
      if (other && Number.isFinite(other.updated) && Date.now() - other.updated < OUTBOX_ORPHAN_MS) continue;
      if (other && Array.isArray(other.items)) found.push(...other.items);
      store(localStorage, key, undefined);
    }
    const known = new Set([...state.outbox, ...state.failed.values()].map((item) => item.clientMsgId));
    let added = false;
    for (const item of found) {
      if (!validItem(item) || known.has(item.clientMsgId)) continue;
      known.add(item.clientMsgId);
      state.outbox.push({
        clientMsgId: item.clientMsgId, channel: item.channel, to: item.to ?? null,
        text: item.text, createdAt: item.createdAt, state: "queued", node: null,
      });
      added = true;
    }
    if (added) {
      state.outbox.sort((a, b) => a.createdAt - b.createdAt);
      for (const item of state.outbox) ensureChannel(item.channel);
    }
    saveOutbox();
    return added;
  }

  function isOpen() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN && state.welcomed;
  }

  function send(payload) {
    if (!isOpen()) return false;
    state.ws.send(JSON.stringify(payload));
    return true;
  }

  // What may wait or be dropped (typing, read, presence) waits while the
  // server's rate limit does: a refused frame counts towards a 1008.
  function sendExtra(payload) {
    return Date.now() >= state.pausedUntil && send(payload);
  }

  // Sends what waits in the outbox, in order, unless the server asked to wait.
  function pump() {
    clearTimeout(state.pumpTimer);
    state.pumpTimer = null;
    if (!isOpen() || state.unavailableTimer !== null) return;
    const wait = state.pausedUntil - Date.now();
    if (wait > 0) {
      state.pumpTimer = setTimeout(pump, wait);
      return;
    }
    for (const item of state.outbox) {
      if (item.state !== "queued") continue;
      const channel = ensureChannel(item.channel);
      if (channel.state === "idle") subscribe(channel);
      item.state = "sent";
      send(item.to
        ? { type: "direct", to: item.to, message: item.text, clientMsgId: item.clientMsgId }
        : { type: "publish", channel: item.channel, message: item.text, clientMsgId: item.clientMsgId });
    }
  }

  // ---------- rendering ----------

  function isNearBottom() {
    const s = ui.scroll;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= STICKY_PX;
  }

  function scrollToBottom() {
    ui.scroll.scrollTop = ui.scroll.scrollHeight;
    state.stick = true;
    ui.jump.hidden = true;
  }

  // Makes `list`'s children exactly `nodes`, moving only what must move.
  function reconcile(list, nodes) {
    const wanted = new Set(nodes);
    for (const child of [...list.children]) if (!wanted.has(child)) child.remove();
    let at = list.firstElementChild;
    for (const node of nodes) {
      if (node === at) at = at.nextElementSibling;
      else list.insertBefore(node, at);
    }
  }

  function render() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    // A microtask, not an animation frame: a tab behind another draws no frames.
    queueMicrotask(() => {
      state.renderQueued = false;
      renderNow();
    });
  }

  function renderNow() {
    renderSidebar();
    renderLog();
    renderMembers();
    renderTyping();
    renderStatus();
    renderCards();
    const total = [...state.channels.values()].reduce((n, ch) => n + unreadCount(ch), 0);
    document.title = `${total ? `(${total}) ` : ""}${state.conn === "open" ? "● " : ""}rfc6455 chat`;
  }

  // A conversation's entry in the sidebar: made once, then updated in place,
  // so that a message arriving does not take the focus or a click away.
  function conversationItem(channel) {
    let entry = channel.entry;
    if (entry === undefined) {
      const node = el("li", { className: "conversation", testid: channel.dm ? "dm" : "channel" });
      node.dataset.channel = channel.name;
      if (channel.dm) node.dataset.peer = peerOf(channel);
      const open = button("", { className: "conversation-open", testid: "open" },
        () => switchTo(channel.name));
      const badge = el("span", { className: "badge", testid: "unread" });
      open.append(
        el("span", { className: "conversation-mark", text: channel.dm ? "@" : "#" }),
        el("span", {
          className: "conversation-name", text: channel.dm ? peerOf(channel) : channel.name,
          testid: "conversation-name",
        }),
        badge);
      node.append(open);
      if (channel.name !== GENERAL) {
        node.append(button("×", {
          className: "leave", testid: "leave",
          title: channel.dm ? "Close this conversation" : `Leave #${channel.name}`,
        }, () => leave(channel.name)));
      }
      entry = channel.entry = { node, open, badge };
    }
    const { node, open, badge } = entry;
    // idle, subscribing or subscribed on the current connection.
    node.dataset.state = channel.state;
    const isCurrent = channel.name === state.current;
    node.dataset.current = String(isCurrent);
    if (isCurrent) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
    const unread = isCurrent && viewing(channel) ? 0 : unreadCount(channel);
    node.dataset.unread = String(unread);
    badge.hidden = unread === 0;
    badge.textContent = unread > 99 ? "99+" : String(unread);
    return node;
  }

  function renderSidebar() {
    const all = [...state.channels.values()];
    const channels = all.filter((ch) => !ch.dm);
    const dms = all.filter((ch) => ch.dm).sort((a, b) => peerOf(a).localeCompare(peerOf(b)));
    reconcile(ui.channels, channels.map(conversationItem));
    reconcile(ui.dms, dms.map(conversationItem));
    ui.dmSection.hidden = me.user === null;
    ui.dmHint.hidden = dms.length > 0;
    const others = all.filter((ch) => ch.name !== state.current).reduce((n, ch) => n + unreadCount(ch), 0);
    ui.otherUnread.hidden = others === 0;
    ui.otherUnread.textContent = others ? String(others) : "";
    if (me.user !== null) {
      ui.meName.replaceChildren(document.createTextNode(me.user));
      ui.rename.hidden = true;
    } else if (me.name !== null) {
      ui.meName.replaceChildren(document.createTextNode(me.name), unverifiedMark());
      ui.rename.hidden = false;
    } else {
      ui.meName.textContent = "—";
      ui.rename.hidden = true;
    }
  }

  function dayNode(channel, date) {
    const key = dayKey(date);
    let node = channel.days.get(key);
    if (node === undefined) {
      node = el("li", { className: "day", testid: "day" }, el("span", { text: dayLabel(date) }));
      node.dataset.day = key;
      channel.days.set(key, node);
    }
    return node;
  }

  function renderLog() {
    const channel = current();
    const follow = isNearBottom();
    const before = ui.log.childElementCount;
    const nodes = [];
    if (channel.notice) {
      channel.noticeNode ??= el("li", { className: "notice", testid: "notice" });
      channel.noticeNode.textContent = channel.notice;
      nodes.push(channel.noticeNode);
    }
    let lastDay = null;
    let previous = null;
    const place = (node, date, senderKey) => {
      const day = dayKey(date);
      if (day !== lastDay) {
        nodes.push(dayNode(channel, date));
        lastDay = day;
        previous = null;
      }
      const continued = previous !== null && previous.key === senderKey &&
        date - previous.date < GROUP_MS;
      if (continued) node.dataset.continued = "true";
      else delete node.dataset.continued;
      previous = { key: senderKey, date };
      nodes.push(node);
    };
    const seqs = [...channel.messages.keys()].sort((a, b) => a - b);
    for (const seq of seqs) {
      const message = channel.messages.get(seq);
      place(chatNode(message), message.date, keyOf(message.sender));
    }
    const waiting = [...state.outbox, ...state.failed.values()]
      .filter((item) => item.channel === channel.name)
      .sort((a, b) => a.createdAt - b.createdAt);
    const mine = keyOf(ownSender());
    for (const item of waiting) place(itemNode(item), new Date(item.createdAt), mine);
    reconcile(ui.log, nodes);
    ui.empty.hidden = nodes.length > 0;
    ui.empty.textContent = channel.dm
      ? `This is the start of your conversation with ${peerOf(channel)}.`
      : "No messages yet. Say hello!";
    if (follow || state.stick) scrollToBottom();
    else if (ui.log.childElementCount > before) ui.jump.hidden = false;
    ui.title.textContent = channel.dm ? `@ ${peerOf(channel)}` : `# ${channel.name}`;
  }

  function memberNode(member) {
    const node = el("li", { className: "member", testid: "member" });
    const key = keyOf(member);
    node.dataset.key = key;
    const { text, verified } = nameOf(member);
    const mine = isMine(member);
    const user = member.user;
    const name = !mine && canDm(user)
      ? button(text, { className: "member-name sender-link", testid: "member-name", title: `Write to ${user}` },
        () => openDm(user))
      : el("span", { className: "member-name", text, testid: "member-name" });
    name.style.setProperty("--sender-hue", hueOf(key));
    node.append(el("span", { className: "presence-dot", title: "Online" }), name);
    if (!verified) node.append(unverifiedMark());
    if (mine) node.append(el("span", { className: "muted you", text: "(you)", testid: "you" }));
    const connections = Number(member.connections);
    if (Number.isSafeInteger(connections) && connections > 1) {
      node.append(el("span", {
        className: "connections", text: `×${connections}`, testid: "member-connections",
        title: `${connections} tabs or devices`,
      }));
    }
    return node;
  }

  function renderMembers() {
    const channel = current();
    const version = `${channel.name} ${channel.membersVersion} ${channel.presenceKnown}`;
    if (state.membersDrawn === version && ui.members.dataset.channel === channel.name) return;
    state.membersDrawn = version;
    ui.members.dataset.channel = channel.name;
    if (channel.dm) {
      ui.membersTitle.textContent = "Direct messages";
      ui.members.replaceChildren();
      ui.membersNote.hidden = false;
      ui.membersNote.textContent = `Only you and ${peerOf(channel)} see this conversation.`;
      ui.memberCount.textContent = "2";
      return;
    }
    const members = [...channel.members.values()]
      .sort((a, b) => nameOf(a).text.localeCompare(nameOf(b).text));
    const total = Math.max(channel.memberTotal, members.length);
    ui.membersTitle.textContent = `Members · ${total}`;
    ui.members.replaceChildren(...members.map(memberNode));
    const unlisted = total - members.length;
    ui.membersNote.hidden = channel.presenceKnown && unlisted === 0;
    ui.membersNote.textContent = channel.presenceKnown ? `and ${unlisted} more` : "Not known yet.";
    ui.memberCount.textContent = String(total);
  }

  function listOf(words) {
    if (words.length < 2) return words.join("");
    return `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
  }

  function renderTyping() {
    const channel = current();
    const now = Date.now();
    const names = [...channel.typing.values()].filter((t) => t.until > now).map((t) => t.name);
    if (names.length === 0) ui.typing.textContent = "";
    else if (names.length > 3) ui.typing.textContent = `${names.length} people are typing…`;
    else ui.typing.textContent = `${listOf(names)} ${names.length === 1 ? "is" : "are"} typing…`;
    ui.typing.dataset.count = String(names.length);
  }

  function renderStatus() {
    ui.status.dataset.state = state.conn;
    let text;
    switch (state.conn) {
      case "open":
        text = state.unavailable ? "Chat unavailable: will retry" : "Connected";
        break;
      case "connecting":
        text = "Connecting…";
        break;
      case "waiting":
        text = `Reconnecting in ${Math.max(1, Math.ceil((state.reconnectAt - Date.now()) / 1000))} s`;
        break;
      default:
        text = state.offlineText;
    }
    ui.statusText.textContent = text;
    const unsent = state.outbox.length;
    ui.unsent.hidden = unsent === 0 || state.conn === "open";
    ui.unsent.textContent = unsent ? `· ${unsent} unsent` : "";
    ui.connect.disabled = state.ws !== null;
    ui.disconnect.disabled = state.ws === null && state.reconnectTimer === null;
    ui.url.disabled = state.ws !== null;
  }

  function renderCards() {
    // No name is asked for while a token is (the server may want one instead).
    const anonymous = state.token === "" && ui.tokenCard.hidden;
    const naming = anonymous && (me.name === null || ui.nameForm.dataset.editing === "true");
    ui.nameForm.hidden = !naming;
    ui.composer.hidden = naming;
  }

  // ---------- the connection's details ----------

  function logEvent(kind, text) {
    const now = new Date();
    const time = el("time", { className: "event-time", text: `${clockTime(now)}:${pad(now.getSeconds())}` });
    time.dateTime = now.toISOString();
    const node = el("li", { className: "event", testid: "event" }, time,
      el("span", { className: "event-text", text, testid: "event-text" }));
    node.dataset.kind = kind;
    ui.events.append(node);
    while (ui.events.childElementCount > MAX_EVENTS) ui.events.firstElementChild.remove();
  }

  function setConn(name, offlineText = "Offline") {
    state.conn = name;
    state.offlineText = offlineText;
    clearInterval(state.countdownTimer);
    state.countdownTimer = name === "waiting" ? setInterval(renderStatus, 1000) : null;
    render();
  }

  function showDetails(open) {
    ui.details.hidden = !open;
    ui.status.setAttribute("aria-expanded", String(open));
  }

  // Asks for a token: after a refused handshake, an expired token, or by hand.
  function askForToken(text, { invalid = false } = {}) {
    ui.tokenText.textContent = text;
    ui.tokenCard.hidden = false;
    if (invalid) {
      ui.token.setAttribute("aria-invalid", "true");
      ui.token.title = "This token has expired: enter a new one";
    } else {
      ui.token.removeAttribute("aria-invalid");
      ui.token.removeAttribute("title");
    }
    ui.token.focus();
    ui.token.select();
  }

  // ---------- connecting ----------

  function socketUrl() {
    let url;
    try {
      url = new URL(ui.url.value.trim());
    } catch {
      return null;
    }
    for (const key of ["since", "epoch", "clientId", "name"]) url.searchParams.delete(key);
    const general = state.channels.get(GENERAL);
    if (general.lastSeq > 0 && general.epoch !== null) {
      url.searchParams.set("since", String(general.lastSeq));
      url.searchParams.set("epoch", general.epoch);
    }
    state.nameInUrl = false;
    if (state.token === "") {
      url.searchParams.set("clientId", me.clientId);
      if (me.name !== null && !state.withoutName) {
        url.searchParams.set("name", me.name);
        state.nameInUrl = true;
      }
    }
    return url.href;
  }

  function cancelReconnect() {
    if (state.reconnectTimer === null) return false;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    return true;
  }

  function connect() {
    cancelReconnect();
    state.generation += 1;
    const token = state.token;
    if (token && token === state.expiredToken) {
      askForToken("This token has expired: paste a new one, then Connect.", { invalid: true });
      setConn("offline", "Offline: token expired");
      return;
    }
    const url = socketUrl();
    if (url === null) {
      logEvent("error", `“${ui.url.value}” is not a server URL, such as ws://localhost:5000.`);
      setConn("offline", "Offline: no server");
      showDetails(true);
      return;
    }
    let ws;
    try {
      // A browser cannot set a header on a WebSocket handshake: the token goes as the
      // subprotocol "access_token.<token>", beside "chat", which the server selects (a
      // browser fails a handshake whose answer selects none of the subprotocols offered).
      ws = token ? new WebSocket(url, ["chat", `access_token.${token}`]) : new WebSocket(url);
    } catch (error) {
      logEvent("error", `Cannot connect to “${url}”: ${error.message}`);
      setConn("offline", "Offline: cannot connect");
      return;
    }
    state.ws = ws;
    state.openedAt = 0;
    state.welcomed = false;
    state.userClosed = false;
    const general = state.channels.get(GENERAL);
    general.resumeFrom = general.lastSeq > 0 && general.epoch !== null ? general.lastSeq : null;
    general.state = "subscribing";
    setConn("connecting");
    logEvent("connecting", `Connecting to ${url}`);

    // Handlers check that they belong to the current socket: a late event from
    // an old one must not change the state of a new one.
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      state.openedAt = Date.now();
      state.refusals = 0;
      // RFC 7692: what the handshake negotiated; the server compresses unless told not to.
      const compressed = ws.extensions.startsWith("permessage-deflate")
        ? ", compressed (permessage-deflate)" : "";
      logEvent("connected", `Connected to ${url}${compressed}`);
      setConn("open");
    });
    ws.addEventListener("message", (event) => {
      if (state.ws === ws) handleMessage(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (state.ws === ws) handleClose(event);
    });
  }

  // Whether the server that served this page answers plain HTTP.
  async function serverAnswers() {
    try {
      const response = await fetch("/healthz", { cache: "no-store" });
      return response.ok;
    } catch {
      return false;
    }
  }

  async function handleClose(event) {
    const wasOpen = state.openedAt !== 0;
    const lasted = wasOpen ? Date.now() - state.openedAt : 0;
    state.ws = null;
    state.openedAt = 0;
    state.welcomed = false;
    state.connectionId = null;
    state.leaving.clear();
    for (const channel of state.channels.values()) {
      channel.state = "idle";
      channel.typing.clear();
      channel.resumeFrom = null;
    }
    // Sent but not acknowledged: it goes again, with the same id, next time.
    for (const item of state.outbox) item.state = "queued";
    clearTimeout(state.unavailableTimer);
    state.unavailableTimer = null;
    state.unavailable = false;
    const words = describeClose(event.code, event.reason);
    if (state.userClosed) {
      logEvent("closed", wasOpen ? `Disconnected: ${words}` : "Connection attempt cancelled.");
      setConn("offline", "Offline");
      return;
    }
    // The server closes a connection whose token expired with exactly this
    // (server/auth.py): dialling again with that token would only be refused.
    if (event.code === 1008 && event.reason === "token expired") {
      state.expiredToken = state.token;
      store(sessionStorage, STORE.token, undefined);
      state.attempt = 0;
      logEvent("expired", `Connection closed: ${words}`);
      setConn("offline", "Offline: token expired");
      askForToken("Your access token has expired. Paste a new one, then Connect: " +
        "the chat resumes where it stopped.", { invalid: true });
      return;
    }
    logEvent("closed", wasOpen ? `Connection closed: ${words}` : `Could not connect: ${words}`);
    if (!wasOpen && isServed()) {
      // A browser is told nothing of a refused handshake: if the server answers
      // HTTP, it refused this page (a missing or invalid token, this origin, too
      // many connections); if it does not, it is down, and will be back.
      const generation = state.generation;
      setConn("connecting");
      const answers = await serverAnswers();
      if (generation !== state.generation || state.ws !== null) return;
      state.refusals = answers ? state.refusals + 1 : 0;
      if (state.refusals >= REFUSALS && state.nameInUrl) {
        state.refusals = 0;
        state.withoutName = true;
        logEvent("refused", "The server refused the connection: trying again without the name.");
        connect();
        return;
      }
      if (state.refusals >= REFUSALS) {
        state.refusals = 0;
        state.withoutName = false;
        logEvent("refused", "The server is up but refused the connection: it may need an " +
          "access token, refuse this page’s site, or have too many connections.");
        setConn("offline", "Offline: refused by the server");
        askForToken(state.token
          ? "The server refused this token. Paste another one, then Connect."
          : "The server refused the connection. If it needs an access token, paste yours " +
            "here, then Connect.");
        return;
      }
    }
    if (lasted >= STABLE_MS) state.attempt = 0;
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const attempt = state.attempt;
    const ideal = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
    const delay = Math.round(ideal * (0.8 + Math.random() * 0.4));
    state.attempt = attempt + 1;
    state.reconnectAt = Date.now() + delay;
    logEvent("reconnect", `Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt + 1}).`);
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = null;
      connect();
    }, delay);
    setConn("waiting");
  }

  function disconnect() {
    const cancelled = cancelReconnect();
    state.attempt = 0;
    state.generation += 1;
    const ws = state.ws;
    if (ws) {
      state.userClosed = true;
      ws.close(1000);
      return;
    }
    if (cancelled) logEvent("closed", "Reconnect cancelled.");
    setConn("offline", "Offline");
  }

  function subscribe(channel) {
    const request = { type: "subscribe", channel: channel.name };
    channel.resumeFrom = null;
    if (channel.lastSeq > 0 && channel.epoch !== null) {
      request.since = channel.lastSeq;
      request.epoch = channel.epoch;
      channel.resumeFrom = channel.lastSeq;
    }
    if (send(request)) channel.state = "subscribing";
  }

  // The server subscribed this connection to a direct-message channel by
  // itself (a direct message came): subscribing again is how this page learns
  // the channel's epoch (and resumes it exactly later).
  function adopt(channel) {
    if (!isOpen()) return;
    send({ type: "unsubscribe", channel: channel.name });
    subscribe(channel);
  }

  function askPresence(channel) {
    if (channel.dm || channel.state !== "subscribed") return;
    sendExtra({ type: "presence", channel: channel.name });
  }

  // General announces no arrivals, and presence counts connections only in
  // snapshots: the channel in view asks again now and then.
  function refreshPresenceSoon(channel, delay = PRESENCE_DEBOUNCE_MS) {
    clearTimeout(channel.presenceTimer);
    channel.presenceTimer = setTimeout(() => askPresence(channel), delay);
  }

  // ---------- messages from the server ----------

  function handleMessage(data) {
    if (typeof data !== "string") {
      logEvent("unknown", "A binary message from the server (ignored).");
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      logEvent("unknown", `A message that is not JSON: ${data.slice(0, 200)}`);
      return;
    }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
      logEvent("unknown", `A message that is not a JSON object: ${data.slice(0, 200)}`);
      return;
    }
    const channel = typeof msg.channel === "string" ? state.channels.get(msg.channel) : undefined;
    if (["ack", "history", "subscribed", "presence"].includes(msg.type)) chatAnswers();
    switch (msg.type) {
      case undefined:
        // The first message has no type: {"connectionId": "<uuid4>"}.
        if (typeof msg.connectionId === "string") {
          state.connectionId = msg.connectionId;
          state.ownConnections.add(msg.connectionId);
        } else {
          logEvent("unknown", `A message without a type: ${data.slice(0, 200)}`);
        }
        break;
      case "welcome":
        onWelcome(msg);
        break;
      case "history":
        onHistory(state.channels.get(GENERAL), msg);
        break;
      case "subscribed": {
        let target = channel;
        if (target === undefined && typeof msg.channel === "string" && !state.leaving.has(msg.channel)) {
          // The server subscribes a user's connections to a pair's channel when a
          // direct message comes (docs/protocol.md, "Direct messages").
          const users = dmUsers(msg.channel);
          if (users !== null && users.includes(me.user)) target = ensureChannel(msg.channel);
          else send({ type: "unsubscribe", channel: msg.channel });
        }
        if (target !== undefined) onHistory(target, msg);
        break;
      }
      case "unsubscribed":
        state.leaving.delete(msg.channel);
        break;
      case "broadcast":
        onBroadcast(msg);
        break;
      case "ack":
        onAck(msg);
        break;
      case "error":
        onError(msg, channel);
        break;
      case "presence":
        if (channel !== undefined && Array.isArray(msg.members)) {
          setMembers(channel, msg.members, msg.count);
          render();
        }
        break;
      case "joined":
        if (channel !== undefined && msg.member && typeof msg.member === "object") {
          const key = keyOf(msg.member);
          if (!channel.members.has(key)) channel.memberTotal += 1;
          channel.members.set(key, { connections: 1, ...channel.members.get(key), ...msg.member });
          channel.membersVersion += 1;
          render();
        }
        break;
      case "left":
        if (channel !== undefined && msg.member && typeof msg.member === "object") {
          // One not listed (beyond the snapshot's first 1,000) is counted all the same.
          if (channel.members.delete(keyOf(msg.member)) || channel.memberTotal > channel.members.size) {
            channel.memberTotal = Math.max(channel.members.size, channel.memberTotal - 1);
          }
          channel.typing.delete(keyOf(msg.member));
          channel.membersVersion += 1;
          render();
        }
        break;
      case "typing":
        if (channel !== undefined && msg.member && typeof msg.member === "object") onTyping(channel, msg.member);
        break;
      case "hello":
        state.helloName = null;
        // The server knows this page by its new name: the member lists show it.
        for (const ch of state.channels.values()) refreshPresenceSoon(ch, 0);
        break;
      case "user_left":
      case "users_left":
        onDepartures(msg);
        break;
      default:
        logEvent("unknown", `A message of an unknown type “${String(msg.type)}”.`);
    }
  }

  // A snapshot: at most 1,000 members are listed, `count` says how many there are.
  function setMembers(channel, list, count) {
    channel.members = new Map();
    for (const member of list) {
      if (member && typeof member === "object") channel.members.set(keyOf(member), member);
    }
    channel.memberTotal = Number.isSafeInteger(count) ? Math.max(count, channel.members.size)
      : channel.members.size;
    channel.presenceKnown = true;
    channel.membersVersion += 1;
  }

  // The server refused this name (a 400 at the handshake, or bad_request to
  // hello): the name prompt comes back, saying so.
  function nameRefused(name) {
    if (me.name === name) {
      me.name = null;
      store(localStorage, STORE.name, undefined);
    }
    ui.name.value = name;
    ui.nameNote.textContent = `The server refused the name “${name}”: choose another one.`;
    ui.nameNote.hidden = false;
    ui.name.setAttribute("aria-invalid", "true");
    render();
  }

  // General announces its departures per connection, without the clientId:
  // a small general's list is asked for again; in a big one (where every
  // member asking would cost the server a big snapshot each) only bare
  // connections, which are members by themselves, are taken off.
  function onDepartures(msg) {
    const general = state.channels.get(GENERAL);
    if (general.memberTotal <= PRESENCE_REFRESH_MAX) {
      refreshPresenceSoon(general, PRESENCE_DEBOUNCE_MS * (1 + Math.random()));
      return;
    }
    const named = msg.type === "users_left" ? msg.users : [msg];
    for (const departure of Array.isArray(named) ? named : []) {
      if (departure === null || typeof departure !== "object" || departure.user !== undefined) {
        continue;
      }
      if (general.members.delete(`connection:${departure.connectionId}`)) {
        general.memberTotal -= 1;
        general.membersVersion += 1;
      }
    }
    render();
  }

  function onWelcome(msg) {
    state.welcomed = true;
    if (state.withoutName) {
      // Connected without the name after a refusal with it: the name was the problem.
      state.withoutName = false;
      logEvent("refused", "The server refused the name: it is asked for again.");
      if (me.name !== null) nameRefused(me.name);
    } else if (state.token === "" && me.name !== null && !state.nameInUrl) {
      // Named while this socket was connecting: its URL did not carry the name.
      if (send({ type: "hello", clientId: me.clientId, name: me.name })) state.helloName = me.name;
    }
    const general = state.channels.get(GENERAL);
    // welcome.epoch is general's; a resume learns it from the history instead,
    // which says whether it is still the one the page resumed in.
    if (general.lastSeq === 0 && typeof msg.epoch === "string") general.epoch = msg.epoch;
    // Subscribed at connect; its history follows (none with --history 0 and no resume).
    general.state = "subscribed";
    askPresence(general);
    for (const channel of state.channels.values()) {
      if (channel.name !== GENERAL) subscribe(channel);
    }
    pump();
    render();
  }

  function onHistory(channel, msg) {
    const items = Array.isArray(msg.messages) ? msg.messages : [];
    const from = channel.resumeFrom;
    channel.resumeFrom = null;
    // The latest messages, in the same epoch, reaching back to the last one
    // shown: nothing is missing, and the view stays (a subscribed the server
    // sent by itself, when a direct message came, is one).
    const seqs = items.map((item) => item?.seq).filter(Number.isSafeInteger);
    const reaches = msg.recovered !== true && channel.lastSeq > 0 && seqs.length > 0 &&
      msg.epoch === channel.epoch && Math.min(...seqs) <= channel.lastSeq + 1;
    if (msg.recovered !== true && !reaches) {
      if (from !== null) {
        logEvent("reset", `${label(channel)}: could not resume after message #${from} ` +
          `(the server’s database changed, or no longer keeps those messages): ` +
          `showing its latest ${items.length}.`);
        channel.notice = "Some earlier messages could not be restored: showing the latest ones.";
      }
      channel.messages.clear();
      channel.lastSeq = 0;
    } else if (from !== null) {
      const n = items.length;
      logEvent("resumed", `${label(channel)}: resumed after message #${from}, ` +
        `${n} missed ${n === 1 ? "message" : "messages"}.`);
    }
    if (typeof msg.epoch === "string") channel.epoch = msg.epoch;
    for (const item of items) addMessage(channel, item);
    if ("lastRead" in msg) channel.serverRead = Number.isSafeInteger(msg.lastRead) ? msg.lastRead : null;
    if (Array.isArray(msg.presence)) setMembers(channel, msg.presence, msg.presenceCount);
    channel.state = "subscribed";
    if (channel.name !== GENERAL && !channel.presenceKnown) askPresence(channel);
    markRead(channel);
    render();
  }

  function onBroadcast(msg) {
    const name = typeof msg.channel === "string" ? msg.channel : GENERAL;
    let channel = state.channels.get(name);
    if (channel === undefined) {
      if (state.leaving.has(name)) return; // sent before the server read the unsubscribe
      const users = dmUsers(name);
      if (users === null || !users.includes(me.user)) {
        logEvent("unknown", `A message for ${name}, which this page is not in.`);
        return;
      }
      channel = ensureChannel(name); // a new direct message
      render();
    }
    if (channel.state !== "subscribed") {
      // The server subscribed this connection itself (a direct message came):
      // the subscribe that follows brings this message in its history, and
      // what was missed before it. Taken now, its seq would hide those.
      if (channel.state === "idle") adopt(channel);
      return;
    }
    if (addMessage(channel, msg)) {
      channel.typing.delete(keyOf(msg));
      markRead(channel);
      render();
    }
  }

  function onAck(msg) {
    const index = state.outbox.findIndex((item) => item.clientMsgId === msg.clientMsgId);
    if (index < 0 || !Number.isSafeInteger(msg.seq)) return;
    const [item] = state.outbox.splice(index, 1);
    saveOutbox();
    const channel = ensureChannel(typeof msg.channel === "string" ? msg.channel : item.channel);
    channel.lastSeq = Math.max(channel.lastSeq, msg.seq);
    // A duplicate's seq may be shown already (a history brought it): the
    // message is then shown once, where the history put it, known by its id.
    const shown = channel.messages.get(msg.seq);
    if (shown !== undefined) {
      shown.clientMsgId = item.clientMsgId;
      if (shown.node !== null) shown.node.dataset.clientMsgId = item.clientMsgId;
    } else {
      const node = itemNode(item);
      node.dataset.seq = String(msg.seq);
      setDelivery(node, "confirmed");
      channel.messages.set(msg.seq, {
        seq: msg.seq, text: item.text, timestamp: null, date: new Date(item.createdAt),
        sender: ownSender(), own: true, node,
      });
    }
    markRead(channel);
    render();
  }

  function onError(msg, channel) {
    const id = msg.clientMsgId;
    const index = typeof id === "string" ? state.outbox.findIndex((item) => item.clientMsgId === id) : -1;
    if (index >= 0) {
      const item = state.outbox[index];
      if (msg.code === "unavailable") {
        // Not taken for now: it stays pending, and goes again later, same clientMsgId.
        item.state = "queued";
        retryUnavailable();
        return;
      }
      if (msg.code === "rate_limited") {
        // Not taken: it goes again once the server allows (so does what was typed after it).
        const wait = Number.isFinite(msg.retryAfterMs) ? Math.max(50, msg.retryAfterMs) : 1000;
        item.state = "queued";
        state.pausedUntil = Math.max(state.pausedUntil, Date.now() + wait);
        logEvent("error", `Sending too fast: the next message goes in ${(wait / 1000).toFixed(1)} s.`);
        pump();
        render();
        return;
      }
      state.outbox.splice(index, 1);
      saveOutbox();
      markFailed(item, msg);
      render();
      return;
    }
    const code = String(msg.code);
    if (msg.code === "unavailable") {
      // A subscribe goes again later; a presence or a read asked again in time.
      if (channel !== undefined && channel.name !== GENERAL && channel.state === "subscribing") {
        channel.state = "idle";
        retryUnavailable();
      } else {
        noteUnavailable();
      }
      return;
    }
    if (msg.code === "rate_limited") {
      // A request (subscribe, read, typing) was dropped: nothing more goes
      // until the server allows, then the channels still waiting are
      // subscribed again (an extra one is answered with already_subscribed,
      // and then done over).
      const wait = Number.isFinite(msg.retryAfterMs) ? Math.max(50, msg.retryAfterMs) : 1000;
      state.pausedUntil = Math.max(state.pausedUntil, Date.now() + wait);
      logEvent("error", `Sending too fast: waiting ${(wait / 1000).toFixed(1)} s.`);
      setTimeout(() => {
        for (const ch of state.channels.values()) {
          if (ch.state === "subscribing" && ch.name !== GENERAL) subscribe(ch);
        }
        pump();
      }, wait);
      return;
    } else if (msg.code === "bad_request" && msg.channel === undefined && state.helloName !== null) {
      const name = state.helloName;
      state.helloName = null;
      nameRefused(name);
    } else if (channel !== undefined && msg.code === "already_subscribed") {
      adopt(channel);
      return;
    } else if (channel !== undefined && channel.name !== GENERAL && channel.state === "subscribing" &&
      ["forbidden", "bad_channel", "too_many_channels"].includes(msg.code)) {
      noteJoin(`Cannot join ${label(channel)}: ${String(msg.message ?? code)}`);
      forget(channel.name);
    }
    const detail = msg.message !== undefined ? `: ${String(msg.message)}` : "";
    logEvent("error", `Server error ${code}${detail}`);
  }

  // The chat cannot reach its engine: said once (an event, the status line),
  // until it answers again.
  function noteUnavailable() {
    if (state.unavailable) return;
    state.unavailable = true;
    logEvent("unavailable", "The chat is unavailable for now: what it did not take is sent again later.");
    render();
  }

  // Subscribes again to the channels and sends again the messages refused as
  // unavailable, after a delay that doubles with each refusal in a row.
  function retryUnavailable() {
    noteUnavailable();
    if (state.unavailableTimer !== null) return;
    const ideal = Math.min(UNAVAILABLE_MAX_MS, UNAVAILABLE_BASE_MS * 2 ** state.unavailableAttempt);
    const delay = Math.round(ideal * (0.8 + Math.random() * 0.4));
    state.unavailableAttempt += 1;
    state.unavailableTimer = setTimeout(() => {
      state.unavailableTimer = null;
      if (!isOpen()) return;
      for (const ch of state.channels.values()) {
        if (ch.name !== GENERAL && ch.state === "idle") subscribe(ch);
      }
      pump();
    }, delay);
  }

  // An answer that shows the chat back: the next outage starts from BASE.
  function chatAnswers() {
    state.unavailableAttempt = 0;
    if (!state.unavailable) return;
    state.unavailable = false;
    render();
  }

  function onTyping(channel, member) {
    if (isMine(member)) return;
    const key = keyOf(member);
    const until = Date.now() + TYPING_SHOW_MS;
    const entry = channel.typing.get(key);
    clearTimeout(entry?.timer);
    const timer = setTimeout(() => {
      if (channel.typing.get(key)?.until === until) {
        channel.typing.delete(key);
        render();
      }
    }, TYPING_SHOW_MS + 50);
    channel.typing.set(key, { name: nameOf(member).text, until, timer });
    render();
  }

  // ---------- user actions ----------

  function closePanels() {
    ui.app.dataset.panel = "";
    ui.scrim.hidden = true;
  }

  function openPanel(name) {
    ui.app.dataset.panel = name;
    ui.scrim.hidden = false;
  }

  function switchTo(name) {
    if (!state.channels.has(name)) return;
    state.current = name;
    const channel = current();
    closePanels();
    ui.composerNote.hidden = true;
    state.stick = true;
    if (channel.state === "idle" && isOpen()) subscribe(channel);
    else askPresence(channel);
    markRead(channel);
    render();
    queueMicrotask(scrollToBottom);
  }

  function noteJoin(text) {
    ui.joinNote.textContent = text ?? "";
    ui.joinNote.hidden = !text;
  }

  function join(name) {
    if (name === GENERAL || state.channels.has(name)) {
      switchTo(name);
      return;
    }
    const channel = ensureChannel(name);
    if (isOpen()) subscribe(channel);
    switchTo(name);
  }

  // Drops a channel from this page: its view, and the messages still waiting for it.
  function forget(name, { save = true } = {}) {
    const channel = state.channels.get(name);
    if (channel === undefined || name === GENERAL) return;
    clearTimeout(channel.readTimer);
    clearTimeout(channel.presenceTimer);
    state.channels.delete(name);
    state.outbox = state.outbox.filter((item) => item.channel !== name);
    for (const [id, item] of state.failed) if (item.channel === name) state.failed.delete(id);
    saveOutbox();
    if (save) saveChannels();
    if (state.current === name) state.current = GENERAL;
    render();
  }

  function leave(name, { save = true } = {}) {
    const channel = state.channels.get(name);
    if (channel === undefined || name === GENERAL) return;
    if (channel.state !== "idle" && send({ type: "unsubscribe", channel: name })) {
      state.leaving.add(name);
    }
    forget(name, { save });
  }

  // Another tab of this browser joined or left a channel, or chose a name:
  // the list and the name are one person's, so this tab follows.
  window.addEventListener("storage", (event) => {
    if (event.key === STORE.channels + whoStores()) {
      const names = stored(localStorage, event.key, []);
      const wanted = new Set(Array.isArray(names) ? names : []);
      for (const name of wanted) {
        if (typeof name !== "string" || !CHANNEL_NAME.test(name) || state.channels.has(name)) continue;
        const users = dmUsers(name);
        if (users !== null && !users.includes(me.user)) continue;
        const channel = makeChannel(name);
        state.channels.set(name, channel);
        if (isOpen()) subscribe(channel);
      }
      for (const name of [...state.channels.keys()]) {
        if (name !== GENERAL && !wanted.has(name)) leave(name, { save: false });
      }
      render();
    } else if (event.key === STORE.name && state.token === "") {
      const name = stored(localStorage, STORE.name, null);
      if (typeof name !== "string" || nameProblem(name) !== null || name === me.name) return;
      me.name = name;
      if (send({ type: "hello", clientId: me.clientId, name })) state.helloName = name;
      render();
    }
  });

  function canDm(user) {
    return typeof user === "string" && me.user !== null && user !== me.user &&
      dmName(me.user, user) !== null;
  }

  function openDm(user) {
    if (!canDm(user)) return;
    const channel = ensureChannel(dmName(me.user, user));
    if (channel.state === "idle" && isOpen()) subscribe(channel);
    switchTo(channel.name);
    ui.message.focus();
  }

  ui.join.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.joinName.value.trim();
    const why = channelProblem(name);
    noteJoin(why);
    if (why !== null) {
      ui.joinName.setAttribute("aria-invalid", "true");
      return;
    }
    ui.joinName.removeAttribute("aria-invalid");
    ui.joinName.value = "";
    join(name);
  });
  ui.joinName.addEventListener("input", () => {
    if (!ui.joinNote.hidden) noteJoin(ui.joinName.value ? channelProblem(ui.joinName.value.trim()) : null);
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

  // The composer works with or without a connection: what is typed waits in
  // the outbox (and in localStorage) until the server confirms it.
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value;
    if (text === "") return;
    const why = unsendable(text);
    composerNote(why);
    if (why !== null) {
      ui.message.focus();
      return;
    }
    const channel = current();
    state.outbox.push({
      clientMsgId: newUuid(), channel: channel.name, to: channel.dm ? peerOf(channel) : null,
      text, createdAt: Date.now(), state: "queued", node: null,
    });
    saveOutbox();
    ui.message.value = "";
    fitComposer();
    ui.message.focus();
    scrollToBottom();
    render();
    pump();
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
  ui.message.addEventListener("input", () => {
    fitComposer();
    const text = ui.message.value;
    // A note goes once its reason does; one for a text too long comes while typing.
    if (!ui.composerNote.hidden || text.length > MAX_TEXT_CHARS) {
      composerNote(text === "" ? null : unsendable(text));
    }
    const channel = current();
    if (text.trim() && channel.state === "subscribed" &&
      Date.now() - channel.typingSentAt >= TYPING_SEND_MS) {
      if (sendExtra({ type: "typing", channel: channel.name })) channel.typingSentAt = Date.now();
    }
  });

  ui.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.name.value.trim();
    const why = nameProblem(name);
    ui.nameNote.textContent = why ?? "";
    ui.nameNote.hidden = why === null;
    if (why !== null) {
      ui.name.setAttribute("aria-invalid", "true");
      ui.name.focus();
      return;
    }
    ui.name.removeAttribute("aria-invalid");
    me.name = name;
    store(localStorage, STORE.name, name);
    delete ui.nameForm.dataset.editing;
    // The server knows it at once; later connections carry it in their URL.
    if (state.token === "" && send({ type: "hello", clientId: me.clientId, name })) {
      state.helloName = name;
    }
    render();
    queueMicrotask(() => ui.message.focus());
  });

  ui.rename.addEventListener("click", () => {
    ui.nameForm.dataset.editing = "true";
    ui.name.value = me.name ?? "";
    closePanels();
    render();
    queueMicrotask(() => ui.name.focus());
  });

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.token.value.trim();
    if (token && token === state.expiredToken) {
      askForToken("This token has expired: paste a new one, then Connect.", { invalid: true });
      return;
    }
    const user = token ? tokenUser(token) : null;
    if (user !== me.user) {
      me.user = user;
      state.membersDrawn = null;
      loadChannels();
    }
    state.token = token;
    store(sessionStorage, STORE.token, token || undefined);
    ui.tokenCard.hidden = true;
    ui.token.removeAttribute("aria-invalid");
    state.attempt = 0;
    state.refusals = 0;
    // The current connection, if any, was made without this token.
    if (state.ws !== null) {
      const old = state.ws;
      state.ws = null;
      old.close(1000);
    }
    connect();
  });

  ui.token.addEventListener("input", () => {
    const token = ui.token.value.trim();
    if (token !== "" && token === state.expiredToken) ui.token.setAttribute("aria-invalid", "true");
    else ui.token.removeAttribute("aria-invalid");
  });

  ui.useToken.addEventListener("click", () => askForToken("Paste an access token, then Connect."));

  ui.connection.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.ws !== null) return;
    state.attempt = 0;
    state.refusals = 0;
    connect();
  });

  ui.disconnect.addEventListener("click", disconnect);

  ui.status.addEventListener("click", () => showDetails(ui.details.hidden));

  ui.openSidebar.addEventListener("click", () => openPanel("sidebar"));
  ui.closeSidebar.addEventListener("click", closePanels);
  ui.openMembers.addEventListener("click", () => {
    if (ui.app.dataset.panel === "members") closePanels();
    else openPanel("members");
  });
  ui.closeMembers.addEventListener("click", closePanels);
  ui.scrim.addEventListener("click", closePanels);

  ui.jump.addEventListener("click", scrollToBottom);
  ui.scroll.addEventListener("scroll", () => {
    state.stick = isNearBottom();
    if (state.stick) ui.jump.hidden = true;
  });
  // A smaller window (a phone keyboard, a rotation) keeps the latest message in view.
  new ResizeObserver(() => {
    if (state.stick) ui.scroll.scrollTop = ui.scroll.scrollHeight;
  }).observe(ui.scroll);

  document.addEventListener("visibilitychange", () => {
    markRead(current());
    render();
  });

  // The channel in view asks who is there now and then; the outbox tells
  // other tabs it is alive, and takes over those of tabs long closed.
  setInterval(() => {
    const channel = current();
    if (channel.memberTotal <= PRESENCE_REFRESH_MAX) askPresence(channel);
  }, PRESENCE_REFRESH_MS);
  setInterval(() => {
    if (adoptOutboxes()) {
      render();
      pump();
    }
  }, OUTBOX_HEARTBEAT_MS);

  // ---------- start ----------

  ui.url.value = defaultUrl();
  // A token may come in this page's own URL (?access_token=...): it is used,
  // and taken out of the address bar, so that it is not kept in the history.
  const pageUrl = new URL(window.location.href);
  // It is kept for this tab only (sessionStorage), so that a reload stays signed in.
  if (pageUrl.searchParams.has("access_token")) {
    state.token = (pageUrl.searchParams.get("access_token") ?? "").trim();
    pageUrl.searchParams.delete("access_token");
    history.replaceState(null, "", pageUrl.href);
    store(sessionStorage, STORE.token, state.token || undefined);
  } else {
    const kept = stored(sessionStorage, STORE.token, "");
    state.token = typeof kept === "string" ? kept : "";
  }
  ui.token.value = state.token;
  me.user = state.token ? tokenUser(state.token) : null;
  loadChannels();
  adoptOutboxes();
  if (me.name === null && state.token === "") queueMicrotask(() => ui.name.focus());
  renderNow();
  // Served by the chat server, the page joins its chat at once, as a chat
  // does; opened as a file, it waits for Connect, since which server to dial
  // is the person's choice.
  if (isServed()) connect();
  else showDetails(true);
})();
