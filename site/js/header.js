// The header line: collection size and the model that ranked it, from the manifest.
import { formatCount, modelLabel } from './text.js';

export function mountHeader(hub, { line }) {
  hub.on('manifest', (m) => {
    const c = m.counts || {};
    line.textContent = `${formatCount(c.images)} images · ${formatCount(c.tags)} tags · ranked by ${modelLabel(m.model)}`;
  });
  hub.on('manifest:error', ({ message }) => { line.textContent = message; });
}
