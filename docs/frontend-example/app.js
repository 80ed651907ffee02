// A desk calendar in one page, written against the ledger's HTTP contract
// only: every command carries an Idempotency-Key and is retried on 503 with
// Retry-After, edits send If-Match with the version last seen, reads after a
// write wait for its position (min_position), and live updates arrive over
// Server-Sent Events. No framework and nothing fetched from elsewhere.
"use strict";

const settings = new URLSearchParams(location.hash.slice(1));
const API = (settings.get("api") || "").replace(/\/$/, "");
const TOKEN = settings.get("token") || "";
const PROPERTY = settings.get("property") || "";
// Kept in the tab only: the fragment is never sent to a server.
history.replaceState(null, "", location.pathname);

const $ = (id) => document.getElementById(id);
const current = { booking: null, etag: null };

function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// One command: the same Idempotency-Key on every attempt, so a retry after a
// lost reply or a 503 can never book twice.
async function command(method, path, body, extraHeaders) {
  const headers = {
    "Authorization": `Bearer ${TOKEN}`,
    "Content-Type": "application/json",
    "Idempotency-Key": crypto.randomUUID(),
    ...extraHeaders,
  };
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(API + path, { method, headers, body: JSON.stringify(body) });
    } catch (networkError) {
      if (attempt >= 5) throw networkError;
      await pause(attempt * 500);
      continue;
    }
    if ((response.status === 503 || response.status === 429) && attempt < 5) {
      const wait = Number(response.headers.get("Retry-After") || "1");
      await pause(wait * 1000);
      continue;
    }
    const reply = response.status === 304 ? null : await response.json();
    return { status: response.status, etag: response.headers.get("ETag"), reply };
  }
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A read that sees at least the log up to `position` (read-your-writes).
async function read(path, position) {
  const separator = path.includes("?") ? "&" : "?";
  const url = API + path + (position ? `${separator}min_position=${position}` : "");
  const response = await fetch(url, { headers: { "Authorization": `Bearer ${TOKEN}` } });
  return { status: response.status, etag: response.headers.get("ETag"), reply: await response.json() };
}

function show(booking, etag) {
  current.booking = booking;
  current.etag = etag;
  $("booking-id").textContent = booking.id;
  $("booking-version").textContent = booking.version;
  $("booking-etag").textContent = etag;
  $("booking-notes").textContent = booking.notes || "";
}

$("reserve").addEventListener("click", async () => {
  const { status, etag, reply } = await command("POST", "/api/v1/bookings", {
    property_id: PROPERTY,
    check_in: $("check-in").value,
    check_out: $("check-out").value,
    guest: { name: $("guest").value },
  });
  if (status !== 201 && status !== 200) {
    return say(`${reply.error.code}: ${reply.error.message}`, true);
  }
  // The write's position: the list read waits until the read models have it.
  const list = await read(`/api/v1/bookings?property_id=${PROPERTY}`, reply.position);
  say(`reserved ${reply.id}; the property now lists ${list.reply.items.length} booking(s)`);
  show(reply, etag);
});

$("save-notes").addEventListener("click", async () => {
  if (!current.booking) return say("reserve first", true);
  const { status, etag, reply } = await command(
    "PATCH",
    `/api/v1/bookings/${current.booking.id}`,
    { notes: $("notes").value },
    { "If-Match": current.etag },
  );
  if (status === 412) {
    // Someone else changed it: show theirs, and let the user decide again.
    const theirs = reply.error.details.current;
    show(theirs, `"${theirs.version}"`);
    return say(`changed elsewhere (now version ${theirs.version}); review and save again`, true);
  }
  if (status !== 200) return say(`${reply.error.code}: ${reply.error.message}`, true);
  show(reply, etag);
  say(`saved as version ${reply.version}`);
});

// Live updates. EventSource cannot send an Authorization header, so the
// token goes in ?access_token= (accepted by this route only); EventSource
// reconnects by itself and sends Last-Event-ID, so nothing is missed.
function listen() {
  const url = `${API}/api/v1/stream?property_id=${PROPERTY}&access_token=${encodeURIComponent(TOKEN)}`;
  const source = new EventSource(url);
  source.onopen = () => { $("stream-state").textContent = "open"; };
  source.onerror = () => { $("stream-state").textContent = "reconnecting"; };
  const types = [
    "property.registered", "property.updated", "property.archived",
    "booking.reserved", "booking.modified", "booking.confirmed", "booking.cancelled",
    "booking.checked_in", "booking.checked_out", "booking.no_show", "booking.hold_expired",
    "availability.blocked", "availability.released",
  ];
  for (const type of types) {
    source.addEventListener(type, (message) => {
      const event = JSON.parse(message.data);
      $("last-event-id").textContent = message.lastEventId;
      const item = document.createElement("li");
      item.dataset.type = type;
      item.dataset.subject = event.subject || "";
      item.textContent = `${message.lastEventId} ${type} ${event.subject || ""}`;
      $("events").appendChild(item);
    });
  }
  source.addEventListener("token_expired", () => {
    source.close();
    $("stream-state").textContent = "closed: the token expired; sign in again";
  });
}

if (API && TOKEN && PROPERTY) {
  listen();
} else {
  say("open this page with #api=...&token=...&property=...", true);
}
