// Drives Debian's headless Chromium through the fedtune dashboard for tests/dashboard.rs.
//
//   node dashboard.mjs run URL ROUND SHOT       wait (no reload) until the run page shows
//                                               round ROUND and a round after the one it
//                                               loaded with; print its plotted federated
//                                               accuracy; screenshot to SHOT
//   node dashboard.mjs study URL TRIALS SHOT    wait until the study page counts TRIALS
//                                               trials; print what its charts hold
//   node dashboard.mjs first-plot URL TESTID    time from navigation to the first chart
//
// Each prints one JSON object on stdout. CHROMIUM overrides /usr/bin/chromium.
import { chromium } from 'playwright-core';

const [mode, url, arg, shot] = process.argv.slice(2);
const TIMEOUT = 60_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The machine has no network beyond loopback: keep Chromium from calling home.
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  // Playwright starts Chromium on a fresh, empty profile of its own.
});

try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  let result;
  if (mode === 'run') {
    const round = Number(arg);
    await page.goto(url);
    const loadedAt = await page.evaluate(() => performance.timeOrigin);
    const latestNow = () => Number(document.querySelector('[data-testid="latest-round"]')?.textContent);
    const atLoad = await page.evaluate(latestNow);
    // The page was loaded once; new rounds must arrive without a reload: at least
    // round ROUND, and at least one round more than the page showed when it loaded.
    await page.waitForFunction(
      ([n, first]) => {
        const latest = Number(document.querySelector('[data-testid="latest-round"]')?.textContent);
        return latest >= n && (Number.isNaN(first) || latest > first);
      },
      [round, atLoad],
      { timeout: TIMEOUT },
    );
    const reloaded = (await page.evaluate(() => performance.timeOrigin)) !== loadedAt;
    const latest = Number(await page.textContent('[data-testid="latest-round"]'));
    const points = await page.$$eval('[data-testid="federated-accuracy-point"]', (els) =>
      els.map((e) => ({ x: Number(e.getAttribute('data-x')), y: Number(e.getAttribute('data-y')) })),
    );
    await page.screenshot({ path: shot, fullPage: true });
    result = { latest_round: latest, round_at_load: Number.isNaN(atLoad) ? null : atLoad, points, reloaded };
  } else if (mode === 'study') {
    const trials = Number(arg);
    await page.goto(url);
    await page.waitForFunction(
      (n) => Number(document.querySelector('[data-testid="trial-count"]')?.textContent) >= n,
      trials,
      { timeout: TIMEOUT },
    );
    const count = Number(await page.textContent('[data-testid="trial-count"]'));
    const rows = await page.$$eval('[data-testid="trial-row"]', (els) => els.length);
    const charts = await page.$$eval('svg[data-testid]', (els) => els.map((e) => e.getAttribute('data-testid')));
    // Sorting by trial number descending puts the last trial first.
    await page.click('#trials th:first-child');
    await page.click('#trials th:first-child');
    const first = Number(await page.textContent('#trials tbody tr:first-child td:first-child'));
    await page.screenshot({ path: shot, fullPage: true });
    result = { trial_count: count, rows, charts, first_after_sort: first };
  } else if (mode === 'first-plot') {
    const started = Date.now();
    await page.goto(url, { waitUntil: 'commit' });
    await page.waitForSelector(`svg[data-testid="${arg}"]`, { state: 'visible' });
    const ms = Date.now() - started;
    if (shot) await page.screenshot({ path: shot });
    result = { first_plot_ms: ms };
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  result.page_errors = errors;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
