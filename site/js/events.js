// The closed set of events components exchange through the hub. A name not listed here is a
// typo: the hub refuses it at once instead of letting a listener wait for an event never sent.
export const EVENTS = Object.freeze({
  MANIFEST: 'manifest', // the collection's manifest arrived: { ...manifest }
  MANIFEST_ERROR: 'manifest:error', // it could not be read: { message }
  SUGGEST: 'suggest', // the search box wants suggestions: { text }
  SUGGESTIONS: 'suggestions', // suggestions for it: { text, items }
  SEARCH: 'search', // run a search: { text, push, restore? } (restore: a history state's pages, scroll, image)
  QUERY: 'query', // the search now shown: { tag }
  RESULTS_CLEAR: 'results:clear',
  RESULTS_LOADING: 'results:loading', // { tag }
  RESULTS_START: 'results:start', // a tag's ranking begins: { tag, total, rankedBy, pages, instead, strip }
  RESULTS_PAGE: 'results:page', // { items, more }
  RESULTS_MORE: 'results:more', // the next page is wanted
  RESULTS_LOADING_MORE: 'results:loading-more',
  RESULTS_UNKNOWN: 'results:unknown', // no such tag: { query, candidates: [{tag, count, key, why}], popular }
  RESULTS_ERROR: 'results:error', // { message }
  VIEW: 'view', // open the viewer on a result: { index }
  VIEWER_CLOSED: 'viewer:closed', // back to the ranking tile it was opened from: { index }
  VIEWER_DONE: 'viewer:done', // the viewer closed, whatever it showed
  VIEWER_CLOSE: 'viewer:close', // close the viewer (Back left its history entry)
  HOME: 'home', // the home page's data: { popular: [{tag, count, key, pages, thumb}] }
  BROWSE: 'browse', // show a page of the A–Z list: { letter, page }
  BROWSE_PAGE: 'browse:page', // one A–Z page to list: { letter, page, pages, entries }
  VIEW_ITEM: 'view:item', // open the viewer on a list outside the ranking: { items, index, label }
  VIEWER_SHOWN: 'viewer:shown', // the viewer shows an image: { imageId }
  SIMILAR: 'similar', // an image's record (more like this, copies): { imageId, record }
  RESULTS_END: 'results:end', // the ranking's last page is shown: { tag }
  PROBABLY: 'probably', // a tag's "probably" strip: { tag, items, jump }
  PROBABLY_WANTED: 'probably:wanted', // the person asked for the strip before the ranking's end: { tag }
});

export const EVENT_NAMES = new Set(Object.values(EVENTS));
