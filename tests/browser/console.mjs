// Drives the web console (O8) in headless Chromium with playwright-core. Run by
// tests/tests/console_browser.rs, which starts a real server with real agents and passes:
//   CONSOLE_URL  https://127.0.0.1:PORT     LOGIN  /login?token=… (one-time link)
//   SPKI         base64 SHA-256 of the console certificate's public key: Chromium accepts that
//                key only (--ignore-certificate-errors-spki-list), verification stays on for
//                everything else
//   TARGET       the device id to revoke     AGENTS  how many agents   SEATS  seats on the key
//   SPARE        an agent without a seat     SPARE_KEY  an unassigned key to give it
//   SHOTS        directory for screenshots  CHROMIUM  the browser binary
// (lib.mjs launches the browser.)
// Exits non-zero with the reason on the first expectation that fails.
import { env, expect, shot, url, withBrowser } from './lib.mjs';

const target = env('TARGET');
const agents = Number(env('AGENTS'));
const seats = Number(env('SEATS'));

await withBrowser(async (page) => {
  // Not signed in: refused, and told how to sign in.
  let r = await page.goto(`${url}/devices`);
  expect(r.status() === 401, 'the devices page without a session is refused (401)');
  expect((await page.content()).includes('console-login'), 'the refusal names admin console-login');

  // A wrong link is refused.
  r = await page.goto(`${url}/login?token=not-a-token`);
  expect(r.status() === 403, 'a wrong sign-in link is refused (403)');

  // The one-time link signs in and lands on the overview.
  r = await page.goto(`${url}${env('LOGIN')}`);
  expect(r.status() === 200 && new URL(page.url()).pathname === '/', 'the sign-in link opens the overview');
  expect(await page.textContent('#sessions') === String(agents), `the overview shows ${agents} agent sessions`);
  expect(await page.locator('meter').count() >= 1, 'seats are shown with a usage bar');
  r = await page.request.get(`${url}${env('LOGIN')}`);
  expect(r.status() === 403, 'the sign-in link works once');
  await shot(page, 'overview');

  // Devices: every agent with its licence state.
  await page.goto(`${url}/devices`);
  const licensed = await page.locator('#devices td.licensed').count();
  const unlicensed = await page.locator('#devices td.unlicensed').count();
  expect(licensed === seats && unlicensed === agents - seats,
    `${seats} agents licensed and ${agents - seats} unlicensed on the devices page (saw ${licensed}/${unlicensed})`);
  await shot(page, 'devices');

  // Search narrows to one device.
  await page.fill('input[name=q]', target.slice(2));
  await page.click('form[action="/devices"] button');
  expect((await page.textContent('#count')).startsWith('1 device'), 'search finds exactly the device');

  // Assign the second key to the agent that has no seat (the test then sees it licensed).
  await page.goto(`${url}/keys`);
  const row = page.locator('#keys tr', { hasText: env('SPARE_KEY') });
  await row.locator('input[name=object]').fill(`device:${env('SPARE')}`);
  await Promise.all([page.waitForNavigation(), row.locator('form[action$="/assign"] button').click()]);
  expect((await page.textContent('#outcome')).startsWith('done'), 'the key is assigned to the device');
  await shot(page, 'keys');

  // Create an enrollment token; it is shown once (the test enrolls an agent with it).
  await page.goto(`${url}/tokens`);
  await page.selectOption('#create-token select[name=role]', 'agent');
  await page.fill('#create-token input[name=uses]', '1');
  await Promise.all([page.waitForNavigation(), page.click('#create-token button')]);
  const token = (await page.textContent('#new-token')).trim();
  expect(token.length > 20, 'a new token is shown');
  await shot(page, 'tokens');
  await page.goto(`${url}/tokens`);
  expect((await page.locator('#new-token').count()) === 0, 'the token is shown once');
  console.log(`token: ${token}`);

  // An action without the CSRF token is refused, and changes nothing.
  r = await page.request.post(`${url}/devices/${target}/revoke`, { form: { free_seat_now: 'on' } });
  expect(r.status() === 403, 'a revoke without the CSRF token is refused (403)');

  // Revoke through the device page (found by search); the page then shows it revoked.
  await page.goto(`${url}/devices?q=${target.slice(2)}`);
  await page.click(`#devices a[href="/devices/${target}"]`);
  await page.check('#revoke-form input[name=free_seat_now]');
  await Promise.all([page.waitForNavigation(), page.click('#revoke')]);
  expect((await page.textContent('#outcome')).startsWith('done'), 'the revoke is done');
  expect((await page.textContent('#licence')).startsWith('revoked'), 'the device shows as revoked');
  await shot(page, 'device');

  // The audit log holds the refused and the done actions.
  await page.goto(`${url}/audit`);
  const log = await page.textContent('#audit');
  expect(log.includes('missing or wrong CSRF token') && log.includes('done'), 'the audit log records refused and done actions');
  await shot(page, 'audit');

  // An idle session expires (the test server's console.session_idle is short).
  await page.waitForTimeout(Number(env('IDLE_MS')) + 1500);
  r = await page.goto(`${url}/`);
  expect(r.status() === 401, 'an expired session is refused');
});
console.log('console browser test passed');
