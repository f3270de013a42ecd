// Wires the components to the hub and runs queries: URL <-> query, data -> results, and
// stale answers dropped (each query has a sequence number and an AbortController).
import { createHub } from './hub.js';
import { createData } from './data.js';
import { normalizeTag } from './text.js';
import { mountHeader } from './header.js';
import { mountSearchBox } from './searchbox.js';
import { mountResults } from './results.js';
import { mountViewer } from './viewer.js';
import { EVENTS } from './events.js';

const SUGGESTIONS = 8;
const SHARD_DELAY_MS = 150; // wait for a pause in typing before fetching a new tag shard

const $ = (id) => document.getElementById(id);
const siteRoot = new URL('.', document.baseURI);
const hub = createHub();
const data = createData(siteRoot);

mountHeader(hub, { line: $('collection'), header: document.querySelector('header.top'), siteRoot });
mountSearchBox(hub, { form: $('search'), input: $('q'), list: $('suggestions') });
mountResults(hub, {
  section: $('results'), title: $('results-title'), note: $('results-note'), near: $('near'),
  grid: $('grid'), sentinel: $('sentinel'), status: $('results-status'), siteRoot,
});
mountViewer(hub, {
  dialog: $('viewer'), figure: $('viewer-figure'), title: $('viewer-title'), meta: $('viewer-meta'),
  source: $('viewer-source'), siteRoot,
});

const aborted = (err) => err?.name === 'AbortError';
const message = (err) => (err?.name === 'HttpError' && err.status === 404
  ? 'Part of the collection is missing; it may be being republished. Try again shortly.'
  : 'Could not load the collection. Check the connection and try again.');

// ---- suggestions as the person types ----
let suggestTimer = 0;
let suggestSeq = 0; // only the latest keystroke may start a shard fetch
function cancelSuggest() {
  suggestSeq += 1;
  clearTimeout(suggestTimer);
}
hub.on(EVENTS.SUGGEST, ({ text }) => {
  cancelSuggest();
  const mine = suggestSeq;
  const query = normalizeTag(text);
  const answer = () => hub.emit(EVENTS.SUGGESTIONS, { text, items: data.matches(query, SUGGESTIONS) });
  data.prefixShard(query).then((i) => {
    if (mine !== suggestSeq) return;
    if (data.hasShard(i)) { answer(); return; }
    suggestTimer = setTimeout(() => data.shard(i).then(answer, (err) => console.warn(err)), SHARD_DELAY_MS);
  }, () => {});
});

// ---- queries ----
let seq = 0;
let controller = null;
let current = null; // {seq, entry, next, pages, loading, signal}

function urlFor(tag) {
  const url = new URL(location.href);
  if (tag) url.searchParams.set('q', tag); else url.searchParams.delete('q');
  return url;
}

async function search(text, push) {
  const tag = normalizeTag(text);
  const mine = ++seq;
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  current = null;
  cancelSuggest();
  if (push) {
    const url = urlFor(tag);
    if (url.href !== location.href) history.pushState({ q: tag }, '', url);
  }
  document.title = tag ? `${tag} · imgsearch` : 'imgsearch';
  hub.emit(EVENTS.QUERY, { tag });
  if (!tag) { hub.emit(EVENTS.RESULTS_CLEAR); return; }
  hub.emit(EVENTS.RESULTS_LOADING, { tag });
  try {
    const entry = await data.findTag(tag);
    if (mine !== seq) return;
    if (!entry) {
      const suggestions = await data.nearTags(tag);
      if (mine === seq) hub.emit(EVENTS.RESULTS_UNKNOWN, { query: tag, suggestions });
      return;
    }
    const page = await data.rankingPage(entry, 0, signal);
    if (mine !== seq) return;
    const pages = Number(page.pages) || 1;
    current = { seq: mine, entry, next: 1, pages, loading: false, signal };
    hub.emit(EVENTS.RESULTS_START, { tag: entry.tag, total: Number(page.total) || 0, rankedBy: page.ranked_by, pages });
    hub.emit(EVENTS.RESULTS_PAGE, { items: Array.isArray(page.items) ? page.items : [], more: pages > 1 });
  } catch (err) {
    if (mine === seq && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
  }
}

async function loadMore() {
  const c = current;
  if (!c || c.loading || c.next >= c.pages) return;
  c.loading = true;
  hub.emit(EVENTS.RESULTS_LOADING_MORE);
  try {
    const page = await data.rankingPage(c.entry, c.next, c.signal);
    if (c !== current) return;
    c.next += 1;
    hub.emit(EVENTS.RESULTS_PAGE, { items: Array.isArray(page.items) ? page.items : [], more: c.next < c.pages });
  } catch (err) {
    if (c === current && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
  } finally {
    c.loading = false;
  }
}

hub.on(EVENTS.SEARCH, ({ text, push }) => search(text, push));
hub.on(EVENTS.RESULTS_MORE, loadMore);

const queryFromUrl = () => new URLSearchParams(location.search).get('q') || '';
window.addEventListener('popstate', () => search(queryFromUrl(), false));

data.manifest().then(
  (m) => hub.emit(EVENTS.MANIFEST, m),
  (err) => hub.emit(EVENTS.MANIFEST_ERROR, { message: message(err) }),
);
search(queryFromUrl(), false);
