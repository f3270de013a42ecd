// The header line: what the site is, in plain words, from the manifest; and the one link to the
// evaluation report (which says how the ranking was made) when the manifest names one.
import { formatCount, safeUrl } from './text.js';
import { EVENTS } from './events.js';

export const REPORT_LINK_TEXT = 'How this ranking was made';

// The manifest's "report" as a URL under the site root, or null. Only a relative path is
// accepted: the report is published with the site, so an absolute URL (another host, a
// javascript: scheme) or a path climbing out of the site is a broken or hostile manifest.
export function reportUrl(manifest, siteRoot) {
  const raw = manifest && typeof manifest === 'object' ? manifest.report : null;
  if (typeof raw !== 'string' || /^\s*[a-z][a-z0-9+.-]*:/i.test(raw)) return null;
  return safeUrl(raw, siteRoot, true);
}

export function mountHeader(hub, { line, header, siteRoot }) {
  let link = null;
  hub.on(EVENTS.MANIFEST, (m) => {
    const c = m.counts || {};
    line.textContent = `Search ${formatCount(c.images)} crawled images by their ${formatCount(c.tags)} tags, each tag's best pictures first.`;
    const href = header && siteRoot ? reportUrl(m, siteRoot) : null;
    if (!href) { link?.remove(); link = null; return; }
    if (!link) {
      link = document.createElement('a');
      link.id = 'report-link';
      link.className = 'report-link';
      link.textContent = REPORT_LINK_TEXT;
      header.append(link);
    }
    link.setAttribute('href', href);
  });
  hub.on(EVENTS.MANIFEST_ERROR, ({ message }) => { line.textContent = message; });
}
