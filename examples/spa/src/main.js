// The reference SPA on the Nexes API: plain DOM code and one GraphQL client (urql with
// graphcache), so that every step a SPA needs is visible here:
// - sign-in with a bearer token; UNAUTHENTICATED (an expired or revoked token) signs out;
// - the orders list scrolls forever over Relay cursors, merged by graphcache's
//   relayPagination, with a status filter and an ordering switch;
// - search, its highlights rendered as text and <mark> elements (never as HTML);
// - create and edit an order, the payload's error codes on the form, and read-your-writes:
//   every read after a write carries the write's X-Nexes-LSN as X-Nexes-Min-LSN;
// - an import upload, followed through importJob until it is final, rejected rows listed;
// - the rate limit's remaining points in a corner, RATE_LIMITED turned into a wait.
import { Client, fetchExchange } from "@urql/core";
import { cacheExchange } from "@urql/exchange-graphcache";
import { relayPagination } from "@urql/exchange-graphcache/extras";

import CREATE_ORDER from "./documents/CreateOrder.graphql?raw";
import IMPORT_JOB from "./documents/ImportJob.graphql?raw";
import ORDERS from "./documents/Orders.graphql?raw";
import SEARCH from "./documents/Search.graphql?raw";
import UPDATE_ORDER from "./documents/UpdateOrder.graphql?raw";
import "./style.css";

const API = "/graphql";
const PAGE = 20;
const FINAL = new Set(["SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED"]);
const $ = (selector) => document.querySelector(selector);

// What the session knows: the token (sessionStorage: gone with the tab) and the newest
// write's position, which every later request sends so that replicas answer only once
// they have replayed it.
const session = { token: sessionStorage.getItem("nexes-token") || "", lsn: "" };

// fetch for urql: the token and the LSN in, the LSN, the budget and the refusals out.
async function apiFetch(url, options = {}) {
  const headers = new Headers(options.headers);
  headers.set("Authorization", `Bearer ${session.token}`);
  if (session.lsn) headers.set("X-Nexes-Min-LSN", session.lsn);
  const response = await fetch(url, { ...options, headers });
  const lsn = response.headers.get("X-Nexes-LSN");
  if (lsn) session.lsn = lsn;
  const remaining = response.headers.get("X-RateLimit-Remaining");
  if (remaining !== null) $("#budget").textContent = `budget: ${remaining} points`;
  if (response.status === 401) signOut("Your session ended (UNAUTHENTICATED): sign in again.");
  if (response.status === 429) waitForBudget(Number(response.headers.get("Retry-After") || "60"));
  return response;
}

// Types without an id live inside their parent in the cache (embedded), not on their own.
const EMBEDDED = [
  "ServiceOrderConnection", "ServiceOrderEdge", "PageInfo", "SearchConnection", "SearchEdge",
  "SearchHighlight", "ServiceOrderPayload", "UserError", "ImportErrorConnection",
  "ImportRowErrorEdge", "ImportRowError",
];

function makeClient() {
  const cache = cacheExchange({
    keys: Object.fromEntries(EMBEDDED.map((name) => [name, () => null])),
    // Pages with the same filter and ordering are one list; first/after only say which part.
    resolvers: { Query: { serviceOrders: relayPagination(), search: relayPagination() } },
    updates: {
      Mutation: {
        // A new order belongs somewhere in every cached list: drop them, the list reads
        // again (with the write's LSN), instead of guessing where it goes.
        createServiceOrder(result, _args, cache) {
          if (!result.createServiceOrder.serviceOrder) return;
          for (const field of cache.inspectFields("Query")) {
            if (field.fieldName === "serviceOrders") cache.invalidate("Query", field.fieldKey);
          }
        },
      },
    },
  });
  return new Client({ url: API, exchanges: [cache, fetchExchange], fetch: apiFetch, requestPolicy: "cache-first" });
}

let client = makeClient();

// Sign-in

function signIn(token) {
  session.token = token.trim();
  sessionStorage.setItem("nexes-token", session.token);
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  resetOrders();
}

function signOut(reason) {
  session.token = "";
  session.lsn = "";
  sessionStorage.removeItem("nexes-token");
  client = makeClient(); // nothing of the last user stays cached
  $("#sign-in-reason").textContent = reason || "";
  $("#sign-in").hidden = false;
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
}

// Rate limits: RATE_LIMITED (HTTP 429) says when to come back; the list tries again then.
let waiting = null;
function waitForBudget(seconds) {
  if (waiting) return;
  const notice = $("#notice");
  let left = Math.max(1, Math.ceil(seconds));
  notice.hidden = false;
  const tick = () => {
    notice.textContent = `You have used this hour's budget: trying again in ${left} s.`;
    if (left-- <= 0) {
      clearInterval(waiting);
      waiting = null;
      notice.hidden = true;
      loadOrders();
    }
  };
  tick();
  waiting = setInterval(tick, 1000);
}

function codeOf(error) {
  const first = error && error.graphQLErrors && error.graphQLErrors[0];
  return first && first.extensions ? first.extensions.code : "";
}

function showError(error) {
  const code = codeOf(error);
  if (code === "UNAUTHENTICATED" || code === "RATE_LIMITED") return; // apiFetch handles these
  $("#notice").hidden = false;
  $("#notice").textContent = code ? `${code}: ${error.graphQLErrors[0].message}` : String(error.message);
}

// The orders list: one growing list over the cursors, next page when its end scrolls into view.

const list = { after: null, hasNext: true, loading: false };

function orderVariables() {
  const status = $("#status-filter").value;
  return { first: PAGE, status: status ? [status] : null, orderBy: $("#order-by").value };
}

function resetOrders() {
  list.after = null;
  list.hasNext = true;
  $("#orders").replaceChildren();
  $("#orders-end").textContent = "";
  loadOrders();
}

async function loadOrders() {
  if (list.loading || !list.hasNext || !session.token || waiting) return;
  list.loading = true;
  const result = await client.query(ORDERS, { ...orderVariables(), after: list.after }).toPromise();
  list.loading = false;
  if (result.error) return showError(result.error);
  // relayPagination answers with every page so far, merged: draw the whole list.
  const connection = result.data.serviceOrders;
  $("#orders").replaceChildren(...connection.edges.map(({ node }) => orderItem(node)));
  list.after = connection.pageInfo.endCursor;
  list.hasNext = connection.pageInfo.hasNextPage;
  $("#orders-end").textContent = list.hasNext ? "" : "No more orders.";
  if (list.hasNext && $("#orders").scrollHeight <= $("#orders").clientHeight) loadOrders();
}

function orderItem(order) {
  const item = document.createElement("li");
  item.dataset.sod = order.sodNumber;
  item.textContent = `${order.sodNumber} · ${order.status} · ${order.totalAmount} ${order.currency} · ${order.customer.name}`;
  item.addEventListener("click", () => editOrder(order));
  return item;
}

new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadOrders();
}, { root: null }).observe($("#orders-end"));
$("#orders").addEventListener("scroll", () => {
  const box = $("#orders");
  if (box.scrollTop + box.clientHeight >= box.scrollHeight - 40) loadOrders();
});
$("#status-filter").addEventListener("change", resetOrders);
$("#order-by").addEventListener("change", resetOrders);

// Search: highlights are HTML-escaped text with <mark> around the matches; they become text
// nodes and <mark> elements, so nothing in them can ever run as markup.

function highlighted(snippet) {
  const fragment = document.createDocumentFragment();
  snippet.split(/(<mark>.*?<\/mark>)/).forEach((part) => {
    const marked = part.startsWith("<mark>");
    const text = new DOMParser().parseFromString(marked ? part.slice(6, -7) : part, "text/html").body.textContent;
    const node = marked ? document.createElement("mark") : document.createTextNode(text);
    if (marked) node.textContent = text;
    fragment.append(node);
  });
  return fragment;
}

$("#search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = new FormData(event.target).get("query");
  const result = await client.query(SEARCH, { query, first: PAGE }).toPromise();
  if (result.error) return showError(result.error);
  const { search } = result.data;
  $("#search-engine").textContent =
    `${search.found}${search.foundExact ? "" : "+"} found` +
    (search.engine === "POSTGRES" ? " (search is degraded: answered by the PostgreSQL fallback)" : "");
  $("#search-results").replaceChildren(
    ...search.edges.map(({ node, highlights }) => {
      const item = document.createElement("li");
      item.append(`${node.sodNumber} · ${node.status} · `);
      highlights.forEach((h) => item.append(highlighted(h.snippet), " "));
      return item;
    }),
  );
});

// Create and edit: the payload's errors go next to the form, code first.

function showFormErrors(form, errors) {
  form.querySelector(".form-errors").replaceChildren(
    ...errors.map((e) => {
      const item = document.createElement("li");
      item.dataset.code = e.code;
      item.textContent = `${e.code}${e.field ? ` (${e.field})` : ""}: ${e.message}`;
      return item;
    }),
  );
}

$("#order-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const f = new FormData(form);
  const input = {
    sodNumber: f.get("sodNumber"),
    customerCode: f.get("customerCode"),
    status: f.get("status"),
    currency: "EUR",
    lines: [{ sku: f.get("sku"), quantity: Number(f.get("quantity")), unitPrice: f.get("unitPrice") }],
  };
  const result = await client.mutation(CREATE_ORDER, { input }).toPromise();
  if (result.error) return showError(result.error);
  const payload = result.data.createServiceOrder;
  showFormErrors(form, payload.errors);
  if (!payload.errors.length) resetOrders(); // the cache dropped the lists; they read with the LSN
});

function editOrder(order) {
  const form = $("#edit-form");
  form.hidden = false;
  form.querySelector(".sod").textContent = order.sodNumber;
  form.elements.status.value = order.status;
  form.dataset.sod = order.sodNumber;
  showFormErrors(form, []);
}

$("#edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const input = { status: form.elements.status.value };
  const result = await client.mutation(UPDATE_ORDER, { sodNumber: form.dataset.sod, input }).toPromise();
  if (result.error) return showError(result.error);
  showFormErrors(form, result.data.updateServiceOrder.errors); // e.g. INVALID_TRANSITION
});

// Import: the upload stores the file and queues the job; importJob tells its progress.

$("#import-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = new FormData(event.target).get("file");
  const response = await apiFetch("/api/imports", {
    method: "POST",
    body: file,
    // The CSRF header: a plain HTML form could not send it, so no other site can upload.
    headers: { "Content-Type": file.type || "application/octet-stream", "X-Nexes-CSRF": "1" },
  });
  const answer = await response.json();
  if (!response.ok) {
    $("#import-status").textContent = `${answer.errors[0].extensions.code}: ${answer.errors[0].message}`;
    return;
  }
  followImport(answer.id);
});

async function followImport(id) {
  const result = await client.query(IMPORT_JOB, { id }, { requestPolicy: "network-only" }).toPromise();
  if (result.error) return showError(result.error);
  const job = result.data.importJob;
  const bar = $("#import-progress");
  bar.hidden = false;
  bar.max = job.totalRows || Math.max(job.processedRows, 1);
  bar.value = job.processedRows;
  $("#import-status").textContent =
    `${job.status}: ${job.processedRows}/${job.totalRows ?? "?"} rows, ${job.inserted} new, ` +
    `${job.updated} changed, ${job.unchanged} unchanged, ${job.failed} rejected` + (job.message ? ` (${job.message})` : "");
  $("#import-status").dataset.status = job.status;
  $("#import-errors").replaceChildren(
    ...(job.errors ? job.errors.edges : []).map(({ node }) => {
      const item = document.createElement("li");
      item.textContent = `row ${node.rowNo}: ${node.code}${node.column ? ` (${node.column})` : ""}: ${node.message}`;
      return item;
    }),
  );
  if (FINAL.has(job.status)) {
    if (job.lsn) session.lsn = job.lsn; // the imported orders, readable from here on
    resetOrders();
  }
  else setTimeout(() => followImport(id), 1000);
}

// Start

$("#sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(new FormData(event.target).get("token"));
});
$("#sign-out").addEventListener("click", () => signOut("Signed out."));
if (session.token) signIn(session.token);
else signOut("");
