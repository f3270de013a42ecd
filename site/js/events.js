// The closed set of events components exchange through the hub. A name not listed here is a
// typo: the hub refuses it at once instead of letting a listener wait for an event never sent.
export const EVENTS = Object.freeze({
  MANIFEST: 'manifest', // the collection's manifest arrived: { ...manifest }
  MANIFEST_ERROR: 'manifest:error', // it could not be read: { message }
  SUGGEST: 'suggest', // the search box wants suggestions: { text }
  SUGGESTIONS: 'suggestions', // suggestions for it: { text, items }
  SEARCH: 'search', // run a search: { text, push }
  QUERY: 'query', // the search now shown: { tag }
  RESULTS_CLEAR: 'results:clear',
  RESULTS_LOADING: 'results:loading', // { tag }
  RESULTS_START: 'results:start', // a tag's ranking begins: { tag, total, rankedBy, pages }
  RESULTS_PAGE: 'results:page', // { items, more }
  RESULTS_MORE: 'results:more', // the next page is wanted
  RESULTS_LOADING_MORE: 'results:loading-more',
  RESULTS_UNKNOWN: 'results:unknown', // no such tag: { query, suggestions }
  RESULTS_ERROR: 'results:error', // { message }
  VIEW: 'view', // open the viewer on a result: { index }
  VIEWER_CLOSED: 'viewer:closed', // { index }
});

export const EVENT_NAMES = new Set(Object.values(EVENTS));
