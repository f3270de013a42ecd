// The results: a heading, a note on how the tag is ranked, and a grid of thumbnails in rank
// order that asks for the next page when its sentinel scrolls into view.
import { formatCount, formatScore, safeUrl, scoreLabel } from './text.js';
import { EVENTS } from './events.js';

export function tileContent(item, tag, thumbUrl) {
  const frag = document.createDocumentFragment();
  if (thumbUrl) {
    const img = document.createElement('img');
    img.loading = 'lazy';
    img.decoding = 'async';
    img.alt = `${tag}, rank ${item.rank}`;
    img.addEventListener('error', () => img.replaceWith(placeholder()), { once: true });
    img.src = thumbUrl;
    frag.append(img);
  } else {
    frag.append(placeholder());
  }
  return frag;
}

export function placeholder() {
  const ph = document.createElement('span');
  ph.className = 'ph';
  ph.textContent = 'no preview';
  return ph;
}

// A tag's name and its image count, two spans (.tag, .count): the search box's suggestions and
// the home page's popular tags show a tag this way.
export function tagWithCount(entry) {
  const name = document.createElement('span');
  name.className = 'tag';
  name.textContent = entry.tag;
  const count = document.createElement('span');
  count.className = 'count';
  count.textContent = formatCount(entry.count);
  return [name, count];
}

// Why a tag is offered for a query that is no tag, in words.
const WHY = { related: 'related', spelled: 'spelled like it', word: 'one of your words', popular: 'popular' };

// The one ranked list of tags to try for a query that is no tag: each a link, why it is offered
// and its image count.
function tagLinks(list, entries) {
  list.replaceChildren(...entries.map((s) => {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = `?${new URLSearchParams({ q: s.tag })}`;
    a.textContent = s.tag;
    a.dataset.tag = s.tag;
    const c = document.createElement('span');
    c.className = 'count';
    c.textContent = `${WHY[s.why] ? `${WHY[s.why]} · ` : ''}${formatCount(s.count)}`;
    if (s.why) li.dataset.why = s.why;
    li.append(a, ' ', c);
    return li;
  }));
  list.hidden = !entries.length;
}

export function mountResults(hub, { section, title, note, related, instead, stripNote, grid, sentinel, status, siteRoot }) {
  let tag = '';
  let count = 0;
  let more = false;
  let labels = null; // the manifest's score_labels
  let rankedByWords = {}; // the manifest's ranked_by: what ordered a tag, in words (model/scoring.py)
  hub.on(EVENTS.MANIFEST, (m) => {
    labels = m.score_labels;
    rankedByWords = m.ranked_by && typeof m.ranked_by === 'object' ? m.ranked_by : {};
  });

  const observer = new IntersectionObserver((entries) => {
    if (more && entries.some((e) => e.isIntersecting)) hub.emit(EVENTS.RESULTS_MORE);
  }, { rootMargin: '600px 0px' });

  // observing again makes the observer report at once, so a short page that leaves the
  // sentinel on screen still asks for the next one
  function rearm() {
    observer.unobserve(sentinel);
    if (more) observer.observe(sentinel);
  }

  function reset(heading) {
    grid.replaceChildren();
    stripNote.replaceChildren();
    stripNote.hidden = true;
    related.replaceChildren();
    related.hidden = true;
    instead.replaceChildren();
    instead.hidden = true;
    note.textContent = '';
    status.textContent = '';
    title.textContent = heading;
    count = 0;
    more = false;
    rearm();
  }

  function tile(item, index) {
    const li = document.createElement('li');
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'tile';
    btn.dataset.index = String(index);
    const rank = item.rank ?? index + 1;
    const score = formatScore(item.score);
    const label = scoreLabel(item.score, labels);
    const said = label && score ? `${label} (score ${score})` : score ? `score ${score}` : '';
    btn.setAttribute('aria-label', `Rank ${rank}${said ? `, ${said}` : ''}: open larger`);
    const url = safeUrl(item.thumb, siteRoot, true);
    btn.append(tileContent({ ...item, rank }, tag, url));
    const cap = document.createElement('span');
    cap.className = 'cap';
    const r = document.createElement('span');
    r.className = 'rank';
    r.textContent = `#${rank}`;
    cap.append(r);
    if (score) {
      // a few words; the number (standard deviations above the tag's typical image) in the title
      const s = document.createElement('span');
      s.className = 'score';
      s.textContent = label || score;
      if (label) s.dataset.label = label;
      s.dataset.score = score;
      btn.title = `Score ${score}: standard deviations above this tag's typical image`;
      cap.append(s);
    }
    btn.append(cap);
    const copies = Array.isArray(item.copies) ? item.copies.length : 0;
    if (copies) {
      // the same picture crawled more than once: shown once, its copies listed in the viewer
      const badge = document.createElement('span');
      badge.className = 'copies';
      badge.textContent = `${copies + 1} copies`;
      btn.append(badge);
      btn.setAttribute('aria-label', `${btn.getAttribute('aria-label')} (${copies + 1} copies)`);
    }
    li.append(btn);
    return li;
  }


  hub.on(EVENTS.RESULTS_CLEAR, () => { reset(''); section.hidden = true; });

  hub.on(EVENTS.RESULTS_LOADING, ({ tag: t }) => {
    section.hidden = false;
    reset(`“${t}”`);
    status.textContent = 'Loading…';
  });

  hub.on(EVENTS.RESULTS_START, ({ tag: t, total, rankedBy, instead: asked, strip }) => {
    tag = t;
    reset(`“${t}”`);
    if (asked) {
      // the query is no tag, but its best related tag is close: its results, said so
      title.textContent = `Showing results for “${t}”`;
      instead.append(`No tag “${asked.query}”. `);
      const others = asked.candidates.filter((r) => r.tag !== t);
      if (others.length) instead.append('Other tags to try:');
      instead.hidden = false;
      tagLinks(related, others);
    }
    section.hidden = false;
    const how = Object.hasOwn(rankedByWords, rankedBy) ? String(rankedByWords[rankedBy]) : '';
    note.textContent = rankedBy === 'index'
      ? `${formatCount(total)} images, in the index's order: nothing could score this tag.`
      : `${formatCount(total)} images, best match first${how ? `: ${how}` : ''}.`;
    note.dataset.rankedBy = how || rankedBy === 'index' ? rankedBy : 'matcher';
    if (strip > 0) {
      // the strip comes after the last page, which may be thousands of pages away: say so here
      const a = document.createElement('a');
      a.href = '#probably';
      a.id = 'strip-link';
      a.textContent = `Probably “${t}”, crawled under another tag (${formatCount(strip)})`;
      a.addEventListener('click', (ev) => {
        ev.preventDefault();
        hub.emit(EVENTS.PROBABLY_WANTED, { tag: t });
      });
      stripNote.append('Also: ', a);
      stripNote.hidden = false;
    }
  });

  hub.on(EVENTS.RESULTS_PAGE, ({ items, more: hasMore }) => {
    grid.append(...items.map((item, k) => tile(item, count + k)));
    count += items.length;
    more = hasMore;
    status.textContent = more ? '' : (count ? 'End of results.' : 'No images for this tag.');
    rearm();
    if (!more && count) hub.emit(EVENTS.RESULTS_END, { tag });
  });

  hub.on(EVENTS.RESULTS_LOADING_MORE, () => { status.textContent = 'Loading more…'; });

  hub.on(EVENTS.RESULTS_UNKNOWN, ({ query, candidates = [], popular }) => {
    section.hidden = false;
    reset(`No tag “${query}”`);
    instead.textContent = popular
      ? 'Nothing in the collection is tagged or spelled like it. Popular tags:'
      : 'That tag is not in the collection. Tags to try, best first:';
    instead.hidden = false;
    tagLinks(related, candidates);
  });

  hub.on(EVENTS.RESULTS_ERROR, ({ message }) => {
    section.hidden = false;
    status.textContent = message;
  });

  const follow = (ev) => {
    const a = ev.target.closest('a[data-tag]');
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    hub.emit(EVENTS.SEARCH, { text: a.dataset.tag, push: true });
  };
  related.addEventListener('click', follow);

  grid.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button.tile');
    if (btn) hub.emit(EVENTS.VIEW, { index: Number(btn.dataset.index) });
  });

  hub.on(EVENTS.VIEWER_CLOSED, ({ index }) => {
    const btn = grid.children[index]?.querySelector('button');
    if (btn) { btn.focus(); btn.scrollIntoView({ block: 'nearest' }); }
  });
}
